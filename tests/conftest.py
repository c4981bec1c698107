"""Shared fixtures (small configs and models on CPU, the tiny trained run, a fake SLURM bin) and
the test markers.

Markers (`make test-fast` leaves both out; `make test` runs everything):
- ``multiprocess``: starts several ranks or processes (DeepSpeed, torchrun, gloo, MPI);
- ``pipeline``: runs a pipeline end to end (pretraining in a subprocess, export, evaluation, a
  sweep). Every test that uses the ``tiny_run`` fixture is marked ``pipeline`` here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_ego.config import Config, load_config

from .slurm_fakes import ADDRS, HOSTS, _write_exe

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "multiprocess: starts several ranks or processes")
    config.addinivalue_line("markers", "pipeline: runs pretraining/export/evaluation end to end")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)


@pytest.fixture
def tiny_cfg() -> Config:
    """configs/tiny_cpu.yaml shrunk further so that a forward takes milliseconds."""
    return load_config(
        "configs/tiny_cpu.yaml",
        ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
         "--model.image_size=32", "--model.local_crop_size=16", "--model.head_hidden_dim=64",
         "--model.head_bottleneck_dim=16", "--model.head_out_dim=32"],
    )


@pytest.fixture
def tiny_model(tiny_cfg):
    from megatron_ego.model.egoagent import EgoAgent

    torch.manual_seed(0)
    return EgoAgent(tiny_cfg.model).eval()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """A real tiny run, built once per session: a small demo world (train and val takes, k-NN
    image folders), preprocessed, configs/tiny_cpu.yaml pretrained for 4 steps in a subprocess,
    and the teacher exported. Returns the paths."""
    from launch import export
    from preprocess import demo_world, egoexo4d

    root = tmp_path_factory.mktemp("tiny_run")
    raw, data = root / "raw", root / "data" / "egoexo4d"
    demo_world.main(["--out", str(raw), "--takes", "4", "--seconds", "3", "--resolution", "96",
                     "--walking-tours", "0", "--knn-train", "3", "--knn-val", "2"])
    for split in ("train", "val"):
        egoexo4d.main(["--root", str(raw), "--out", str(data / split), "--split", split,
                       "--size", "64"])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["MASTER_PORT"] = str(_free_port())  # other test runs may hold DeepSpeed's default port
    subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", "configs/tiny_cpu.yaml",
         "--ds_config", "configs/zero2.json", f"--data.egoexo4d_path={data / 'train'}",
         "--data.walking_tours_ratio=0", "--data.num_workers=0", f"--run.output_dir={root / 'runs'}",
         "--run.name=t", "--schedule.train_iters=4", "--schedule.warmup_iters=1",
         "--run.global_batch_size=8", "--resume", "none"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
    )
    run_dir = root / "runs" / "t"
    assert export.main(["--checkpoint", str(run_dir), "--out", str(root / "export")]) == 0
    return {"root": root, "raw": raw, "train": data / "train", "val": data / "val",
            "run": run_dir, "export": root / "export",
            "checkpoint": run_dir / "checkpoints" / "step_0000004"}


@pytest.fixture(scope="session")
def agent(tiny_run):
    """The tiny run's export, loaded for inference on CPU."""
    from megatron_ego.inference import EgoAgent

    return EgoAgent.from_pretrained(tiny_run["export"], device="cpu")


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """A bin/ with a fake scontrol: `show hostnames` prints HOSTS[:SLURM_NNODES], `show node -o
    H` a line with H's NodeAddr (ADDRS, same order), else it logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hosts = " ".join(HOSTS)
    cases = "\n".join(f"        {h}) echo 'NodeName={h} Arch=x86_64 NodeAddr={a} NodeHostName={h}' ;;"
                      for h, a in zip(HOSTS, ADDRS))
    _write_exe(bin_dir / "scontrol", f"""#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then
    printf '%s\\n' {hosts} | head -n "${{SLURM_NNODES:-1}}"
elif [[ "$1 $2 $3" == "show node -o" ]]; then
    case $4 in
{cases}
        *) exit 1 ;;
    esac
else
    echo "$*" >> "{tmp_path}/scontrol.log"
fi
""")
    return bin_dir


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> dict[str, str]:
    """A 2-take demo world preprocessed at 72 px (Ego-Exo4D train split and WalkingTours)."""
    from .pretrain_runs import PY, _run

    root = tmp_path_factory.mktemp("demo")
    raw, data = root / "raw", root / "data"
    for cmd in (
        ["-m", "preprocess.demo_world", "--out", raw, "--takes", "2", "--seconds", "4",
         "--resolution", "96", "--walking-tours", "1", "--walking-tours-seconds", "4",
         "--knn-train", "1", "--knn-val", "1"],
        ["-m", "preprocess.egoexo4d", "--root", raw, "--out", data / "egoexo4d", "--split",
         "train", "--size", "72"],
        ["-m", "preprocess.walking_tours", "--videos", raw / "walking_tours", "--out",
         data / "walking_tours", "--size", "72"],
    ):
        out = _run([PY, *map(str, cmd)])
        assert out.returncode == 0, out.stderr[-2000:]
    return {"ego": str(data / "egoexo4d"), "wt": str(data / "walking_tours"), "root": str(root)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real SLURM cluster for the module (tests/slurm_cluster.py); skips without SLURM, fails
    instead under EGO_REQUIRE_SLURM=1."""
    from .slurm_cluster import start_cluster

    yield from start_cluster(tmp_path_factory.mktemp("slurm") / "cluster")
