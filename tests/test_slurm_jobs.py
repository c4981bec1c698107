"""preprocess.sbatch, evaluate.sbatch and shellcheck, with simulated SLURM variables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .slurm_fakes import (
    REPO,
    SLURM_DIR,
    _dry_run,
    _env,
    _flag,
    _split_at,
    _write_exe,
)

# ---------------------------------------------------------------- preprocess.sbatch (dry run)

def test_preprocess_egoexo4d_mpi_ranks_across_all_nodes(fake_bin, tmp_path):
    env = _env(fake_bin, 4, SLURM_NTASKS="64", RAW_DIR=str(tmp_path), SPLIT="val")
    (cmd,) = _dry_run("preprocess.sbatch", env, "--workers", "2")
    srun, program = _split_at(cmd, "python")
    assert _flag(srun, "--nodes") == "4"
    assert _flag(srun, "--ntasks") == "64"
    assert _flag(srun, "--mpi") == "pmix"
    assert program[:2] == ["-m", "preprocess.egoexo4d"]
    assert _flag(program, "--root") == str(tmp_path)
    assert _flag(program, "--out") == "data/egoexo4d/val"
    assert _flag(program, "--split") == "val"
    assert program[-2:] == ["--workers", "2"]


def test_preprocess_walking_tours_over_mpi_in_a_container(fake_bin, tmp_path):
    env = _env(fake_bin, 1, SLURM_NTASKS="10", RAW_DIR=str(tmp_path), SOURCE="walking_tours",
               CONTAINER_IMAGE="/shared/ego.sqsh")
    (cmd,) = _dry_run("preprocess.sbatch", env)
    srun, program = _split_at(cmd, "python")
    assert _flag(srun, "--nodes") == "1"
    assert _flag(srun, "--ntasks") == "10"
    assert _flag(srun, "--mpi") == "pmix"
    assert _flag(srun, "--container-image") == "/shared/ego.sqsh"
    assert program == ["-m", "preprocess.walking_tours", "--videos", str(tmp_path),
                       "--out", "data/walking_tours"]


FAKE_SRUN_MPI = """#!/bin/bash
# Stands in for `srun --mpi=pmix`: the same ranks through Open MPI's mpirun on this machine.
ntasks=1
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in --ntasks=*) ntasks=${1#--ntasks=} ;; esac
    shift
done
exec mpirun -n "$ntasks" --allow-run-as-root --oversubscribe "$@"
"""


@pytest.mark.skipif(shutil.which("mpirun", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.multiprocess
def test_preprocess_for_real_on_two_mpi_ranks(fake_bin, tmp_path):
    """preprocess.sbatch -> (fake srun) mpirun -n 2 -> preprocess.egoexo4d on the demo world."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "preprocess.demo_world", "--out", str(raw), "--takes", "2",
                    "--seconds", "2", "--resolution", "64", "--walking-tours", "0",
                    "--knn-train", "1", "--knn-val", "1"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    _write_exe(fake_bin / "srun", FAKE_SRUN_MPI)
    env = _env(fake_bin, 1, SLURM_NTASKS="2", RAW_DIR=str(raw), OUT_DIR=str(out))
    env["PATH"] = f"{env['PATH']}:{Path(sys.executable).parent}"
    proc = subprocess.run(["bash", str(SLURM_DIR / "preprocess.sbatch"), "--undistort", "off",
                           "--takes-per-shard", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "egoexo4d" and manifest["split"] == "train"
    assert manifest["num_clips"] > 0
    for name in ("frames", "poses", "camera", "clips"):
        assert (out / f"{name}.bin").stat().st_size > 0 and (out / f"{name}.idx").exists()


@pytest.mark.parametrize(("extra", "message"), [
    ({}, "RAW_DIR"),
    ({"RAW_DIR": "/tmp", "SOURCE": "ego4d"}, "SOURCE=ego4d"),
])
def test_preprocess_rejects_bad_input_with_a_message(fake_bin, extra, message):
    proc = subprocess.run(["bash", str(SLURM_DIR / "preprocess.sbatch")],
                          env={**_env(fake_bin), **extra, "DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr


# ------------------------------------------------------------------ evaluate.sbatch (dry run)

def test_evaluate_exports_the_run_then_evaluates_on_8_gpus(fake_bin):
    env = _env(fake_bin, 1, RUN_DIR="runs/egoagent_300m")
    export, evaluate = _dry_run("evaluate.sbatch", env, "--batch_size", "64")
    assert export[export.index("python"):] == [
        "python", "launch/export.py", "--checkpoint", "runs/egoagent_300m",
        "--out", "runs/egoagent_300m/export"]
    _, torchrun = _split_at(evaluate, "torchrun")
    assert _flag(torchrun, "--nproc_per_node") == "8"
    assert _flag(torchrun, "--model") == "runs/egoagent_300m/export"
    assert _flag(torchrun, "--task") == "all"
    assert _flag(torchrun, "--out") == "runs/egoagent_300m/eval"
    assert torchrun[-2:] == ["--batch_size", "64"]


def test_evaluate_an_existing_export_skips_the_export(fake_bin):
    env = _env(fake_bin, 1, MODEL_DIR="/models/ego", TASK="act")
    (cmd,) = _dry_run("evaluate.sbatch", env)
    assert "launch/evaluate.py" in cmd and "launch/export.py" not in cmd
    assert _flag(cmd, "--task") == "act"
    assert _flag(cmd, "--out") == "/models/ego/eval"


# ------------------------------------------------------------------------------- shellcheck

@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_passes_on_every_launch_script():
    scripts = sorted(str(p) for p in SLURM_DIR.iterdir() if p.suffix in (".sh", ".sbatch"))
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
