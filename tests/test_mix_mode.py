"""data.mix_mode=within_batch end to end, 2 ranks under ZeRO-2: every optimizer step carries both
sources at the ratio, and a resumed run reproduces the uninterrupted one bit for bit (the
homogeneous mode's resume is tests/test_pretrain.py::test_resume_is_bit_exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .pretrain_runs import _args, _losses, _start, _wait, _weights

pytestmark = [pytest.mark.multiprocess, pytest.mark.pipeline]

# 2 ranks x micro-batch 2 x 2 accumulated = 8 samples per step; ratio 0.25: micro-batches
# alternate 1 WalkingTours + 1 clip and 2 clips, so every step holds 2 of 8 WalkingTours frames.
MIXED = ["--data.mix_mode=within_batch", "--run.global_batch_size=8",
         "--schedule.train_iters=4", "--run.save_interval=2"]


def _records(run_dir: str) -> list[dict]:
    lines = (Path(run_dir) / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def straight_mixed(demo_data, tmp_path_factory) -> str:  # noqa: F811
    run_dir = str(tmp_path_factory.mktemp("straight_mixed"))
    _wait(_start(_args(demo_data, run_dir, *MIXED, "--resume", "none")))
    return run_dir


def test_every_step_carries_both_sources_at_the_ratio(straight_mixed):
    records = _records(straight_mixed)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["walking_tours_share"] == 0.25  # 1 of each rank's 4 samples: exactly the ratio
        assert "loss_represent" in r and "loss_act" in r and "loss_predict" in r


def test_mixed_resume_is_bit_exact(demo_data, straight_mixed, tmp_path):  # noqa: F811
    run_dir = str(tmp_path)
    _wait(_start(_args(demo_data, run_dir, *MIXED, "--max_steps", "2")))
    logs = _wait(_start(_args(demo_data, run_dir, *MIXED, "--resume", "auto")))
    assert "resumed from" in logs[0] and "step_0000002" in logs[0]
    assert _losses(run_dir) == _losses(straight_mixed)  # the same float at every step
    a = _weights(Path(straight_mixed) / "run" / "checkpoints" / "step_0000004")
    b = _weights(Path(run_dir) / "run" / "checkpoints" / "step_0000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
