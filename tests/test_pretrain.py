"""Pretraining end to end on the demo world: exact resume, checkpoint on SIGTERM, ZeRO-2 really
partitioning the optimizer, and start-up errors. Workers are started the way srun starts them
(one process per rank with RANK / WORLD_SIZE / MASTER_* set), so signals reach them directly."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from megatron_ego.runtime import exit_codes
from megatron_ego.training.checkpoint import safe_load

from .pretrain_runs import PY, ROOT, _args, _losses, _run, _start, _wait, _weights

pytestmark = [pytest.mark.multiprocess, pytest.mark.pipeline]


@pytest.fixture(scope="module")
def straight_run(demo_data, tmp_path_factory) -> str:
    """4 steps without interruption, 2 ranks, ZeRO-2, checkpoints at steps 2 and 4."""
    run_dir = str(tmp_path_factory.mktemp("straight"))
    _wait(_start(_args(demo_data, run_dir, "--schedule.train_iters=4", "--run.save_interval=2",
                       "--resume", "none")))
    return run_dir


def test_resume_is_bit_exact(demo_data, straight_run, tmp_path):
    run_dir = str(tmp_path)
    common = ["--schedule.train_iters=4", "--run.save_interval=2"]
    _wait(_start(_args(demo_data, run_dir, *common, "--max_steps", "2")))
    logs = _wait(_start(_args(demo_data, run_dir, *common, "--resume", "auto")))
    assert "resumed from" in logs[0] and "step_0000002" in logs[0]
    straight, resumed = _losses(straight_run), _losses(run_dir)
    assert sorted(resumed) == [1, 2, 3, 4]
    assert resumed == straight  # the same float at every step
    a = _weights(Path(straight_run) / "run" / "checkpoints" / "step_0000004")
    b = _weights(Path(run_dir) / "run" / "checkpoints" / "step_0000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero2_partitions_the_optimizer_state(straight_run):
    folder = Path(straight_run) / "run" / "checkpoints" / "step_0000004"
    model = safe_load(folder / "mp_rank_00_model_states.pt")["module"]
    trainable = sum(v.numel() for k, v in model.items()
                    if torch.is_tensor(v) and "word_embeddings" not in k)
    held = []
    for rank in range(2):
        state = safe_load(folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        state = state["optimizer_state_dict"]
        fp32 = sum(t.numel() for t in state["single_partition_of_fp32_groups"])
        moments = sum(s["exp_avg"].numel() for s in state["base_optimizer_state"]["state"].values())
        assert moments == pytest.approx(fp32, abs=8)  # Adam state mirrors the partition (padding)
        held.append(fp32)
    assert sum(held) >= trainable  # together they hold everything (plus alignment padding)
    for n in held:
        assert n == pytest.approx(trainable / 2, rel=0.02)  # each rank about half


def test_sigterm_checkpoints_and_the_run_resumes(demo_data, tmp_path):
    run_dir = str(tmp_path)
    procs = _start(_args(demo_data, run_dir, "--schedule.train_iters=200",
                         "--run.save_interval=1000", "--resume", "none"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    for p in procs:  # as scancel / a node drain does: every task gets SIGTERM
        p.send_signal(signal.SIGTERM)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [exit_codes.PREEMPTED] * 2, logs[0][-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    latest = (checkpoints / "latest").read_text().strip()
    assert (checkpoints / latest / "COMPLETE").is_file()
    assert (tmp_path / "run" / "PREEMPTED").is_file()
    stopped_at = int(latest.split("_")[1])
    assert 2 <= stopped_at < 200
    # A later folder cut off mid-write (no COMPLETE) must be skipped with a warning.
    broken = checkpoints / "step_0009999"
    broken.mkdir()
    (broken / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02truncated")
    logs = _wait(_start(_args(demo_data, run_dir, f"--schedule.train_iters={stopped_at + 1}",
                              "--resume", "auto")))
    assert "ignoring incomplete checkpoint" in logs[0] and "step_0009999" in logs[0]
    assert f"resumed from {checkpoints / latest}" in logs[0]
    assert max(_losses(run_dir)) == stopped_at + 1


@pytest.mark.parametrize("extra, needle", [
    (["--model.num_layer=2"], "unknown config key 'model.num_layer'"),
    (["--data.egoexo4d_path=/nonexistent/data"], "data.egoexo4d_path='/nonexistent/data'"),
    (["--ds_config", "BAD_JSON"], "train_batch_size=64 disagrees with run.global_batch_size=4"),
])
def test_startup_errors_are_one_line_and_come_first(demo_data, tmp_path, extra, needle):
    if "BAD_JSON" in extra:
        ds = json.loads((ROOT / "configs" / "zero2.json").read_text())
        ds["train_batch_size"] = 64
        bad = tmp_path / "zero2_bad.json"
        bad.write_text(json.dumps(ds))
        extra = ["--ds_config", str(bad)]
    start = time.time()
    out = _run([PY, *_args(demo_data, str(tmp_path)), *extra])
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing was started or written
    assert time.time() - start < 60
