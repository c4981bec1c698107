"""Keep the last good checkpoint (issue 23 item 5): no checkpoint while steps are flagged
(skipped or non-finite), pruning keeps the newest checkpoint saved before a streak's first flag,
and the stop message names a checkpoint that exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ego.runtime import exit_codes
from megatron_ego.training import checkpoint as ckpt
from megatron_ego.training.last_good import LastGood
from megatron_ego.training.state import TrainState

from .test_reliability_input import _probe, make_dataset


def _fake_checkpoint(root: Path, step: int) -> None:
    folder = root / ckpt.tag_for(step)
    folder.mkdir(parents=True)
    (folder / ckpt.COMPLETE).write_text("{}")


def test_the_anchor_of_a_streak_is_the_newest_save_before_it_and_pruning_keeps_it(tmp_path):
    root = tmp_path / "checkpoints"
    state = TrainState()
    keeper = LastGood(state, keep_last=1, checkpoints=root, saved_step=0)
    for step, skipped in [(1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0)]:
        flagged = keeper.observe(step, skipped, 0)
        assert (flagged is None) == (skipped == 0)
        if flagged is None:
            _fake_checkpoint(root, step)
            ckpt.prune(root, 1, root / ckpt.tag_for(step), frozenset(state.protected))
            keeper.saved(step)
    assert state.protected == [2]
    assert [ckpt.step_of(p) for p in ckpt.step_folders(root)] == [2, 6]  # keep_last=1 plus 2
    assert keeper.observe(7, 0, 1) == 7  # a non-finite loss starts the next streak
    assert keeper.observe(8, 1, 2) == 7
    assert state.protected == [6]  # the anchors of the last keep_last streaks
    assert keeper.advice() == (f"the newest checkpoint before the first flagged step 7 is "
                               f"{root / 'step_0000006'}: resume with --resume "
                               f"{root / 'step_0000006'}")


def test_the_advice_never_names_a_checkpoint_that_does_not_exist(tmp_path):
    keeper = LastGood(TrainState(), keep_last=3, checkpoints=tmp_path, saved_step=0)
    keeper.observe(1, 1, 0)
    assert keeper.advice().startswith("no checkpoint of this run exists")


@pytest.mark.pipeline
def test_a_run_with_two_skip_streaks_keeps_the_checkpoint_before_each_and_names_it(tmp_path):
    data = make_dataset(tmp_path / "data")
    result, stderr = _probe("nan_steps", tmp_path, data, "--schedule.train_iters=12",
                            "--run.save_interval=1", "--run.keep_last=1",
                            "--optim.max_skipped_steps=3", "--optim.lr=1e-4",
                            PROBE_NAN_STEPS="3,4,7,8,9")
    assert result["rc"] == exit_codes.STOPPED, stderr[-3000:]
    skipped = [s["step"] for s in result["steps"] if s["skipped"]]
    assert skipped == [3, 4, 7, 8, 9]
    root = tmp_path / "run" / "checkpoints"
    # saved at 1, 2, 5, 6 only; keep_last=1 would have left 6 alone: 2 is the first streak's
    # anchor and survived the prunes at steps 5 and 6
    assert [ckpt.step_of(p) for p in ckpt.step_folders(root)] == [2, 6]
    assert stderr.count("checkpoint postponed until a step is not skipped") == 4  # 3, 4, 7, 8
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged: 3 optimizer steps in a row skipped" in errors[0]
    # each skipped step names the records it drew (issue 23 item 3)
    named = {s["step"]: s["records"] for s in result["steps"] if s["skipped"]}
    assert all(named[step].startswith(f"rank 0: {data} clips [") for step in skipped)
    assert f"step 3 skipped (inf/nan gradients: no weight or EMA update): 1 in a row, 1 in this " \
           f"run; its records: {named[3]}" in stderr
    assert f"(the skipped steps' records: step 7: {named[7]}; step 8: {named[8]}; step 9: " \
           f"{named[9]})" in errors[0]
    assert errors[0].endswith(f"the newest checkpoint before the first flagged step 7 is "
                              f"{root / 'step_0000006'}: resume with --resume "
                              f"{root / 'step_0000006'}")
