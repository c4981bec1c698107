"""Helpers of the pretraining tests: 2-rank runs started the way srun starts them, their
losses and weights (the `demo_data` fixture that they train on is in conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from megatron_ego.training.checkpoint import safe_load

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# A small model and batch on top of configs/tiny_cpu.yaml; 2 ranks x micro-batch 2 = global 4.
TINY = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
        "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32", "--model.head_out_dim=128",
        "--data.num_workers=0", "--data.num_local_crops=2", "--run.micro_batch_size=2",
        "--run.global_batch_size=4", "--schedule.warmup_iters=1", "--run.log_interval=1"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(demo_data, run_dir: str, *extra: str) -> list[str]:
    return ["launch/pretrain.py", "--config", "configs/tiny_cpu.yaml",
            "--ds_config", "configs/zero2.json", *TINY,
            f"--data.egoexo4d_path={demo_data['ego']}",
            f"--data.walking_tours_path={demo_data['wt']}", "--data.walking_tours_ratio=0.25",
            f"--run.output_dir={run_dir}", "--run.name=run", *extra]


def _start(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([PY, *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def _losses(run_dir: str) -> dict[int, float]:
    lines = (Path(run_dir) / "run" / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    student = safe_load(folder / "mp_rank_00_model_states.pt", )["module"]
    teacher = safe_load(folder / "trainer_state.pt", )["teacher"]
    both = {f"student.{k}": v for k, v in student.items()}
    both.update({f"teacher.{k}": v for k, v in teacher.items()})
    return {k: v for k, v in both.items() if torch.is_tensor(v)}


