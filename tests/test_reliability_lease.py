"""Two training jobs on one run folder (issue 23 item 1): the races that mixed two runs before
the lease (the same config started together; seeds 0 and 1 started 0.3 s and 3 s apart). Now
the job that takes the lease first trains, the other is refused with exit 2 and one line naming
the holder, and the folder holds exactly one run's checkpoints and metrics.

Both jobs run tests/reliability_probe.py's `hold` mode: launch/pretrain.py on one rank that
waits a few seconds after taking the lease, so that the other job, however the two start-ups
interleave on a loaded machine, arrives while the folder is held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_ego.runtime import exit_codes
from megatron_ego.training import checkpoint as ckpt

from .reliability_data import TINY, make_dataset

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--schedule.train_iters=4", "--run.save_interval=2", "--optim.lr=1e-4"]


def _job(data: Path, out: Path, seed: int) -> subprocess.Popen:
    args = ["--config", "configs/tiny_cpu.yaml", "--ds_config", "configs/zero2.json", *TINY,
            *STEPS, f"--data.egoexo4d_path={data}", f"--run.output_dir={out}",
            f"--run.seed={seed}"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                        "SLURM_JOB_ID")}
    env["PROBE_HOLD_S"] = "10"
    return subprocess.Popen([sys.executable, "tests/reliability_probe.py", "hold", *args],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _exit_code(stdout: str) -> int:
    """launch/pretrain.py's exit code, as the probe reports it."""
    lines = [line for line in stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][6:])["rc"]


@pytest.mark.multiprocess
@pytest.mark.pipeline
@pytest.mark.parametrize("delay, seeds", [(0.0, (0, 0)), (0.3, (0, 1)), (3.0, (0, 1))],
                         ids=["together-same-seed", "0.3s-other-seed", "3s-other-seed"])
def test_a_second_job_on_a_held_run_folder_is_refused_and_nothing_mixes(tmp_path, delay, seeds):
    data = make_dataset(tmp_path / "data")
    first = _job(data, tmp_path, seeds[0])
    time.sleep(delay)
    second = _job(data, tmp_path, seeds[1])
    outputs = {p.pid: p.communicate(timeout=600) for p in (first, second)}
    codes = {pid: _exit_code(out) for pid, (out, _) in outputs.items()}
    assert sorted(codes.values()) == [exit_codes.FINISHED, exit_codes.INPUT_ERROR], outputs
    winner = next(p for p in (first, second) if codes[p.pid] == exit_codes.FINISHED)
    loser = second if winner is first else first
    errors = [line for line in outputs[loser.pid][1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in outputs[loser.pid][1]
    assert "is in use by a job on host" in errors[0] and f"PID {winner.pid}," in errors[0]
    run = tmp_path / "run"
    # exactly one run: its seed, one record per step, every checkpoint of its run id
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"] == \
        seeds[0 if winner is first else 1]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]
    run_id = ckpt.read_run_id(run)
    folders = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert folders == ["step_0000002", "step_0000004"]
    assert {ckpt.read_manifest(run / "checkpoints" / f)["run_id"] for f in folders} == {run_id}
    assert not (run / "LEASE").exists()  # given back at the end
