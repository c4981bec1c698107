"""preprocess.sbatch, evaluate.sbatch and shellcheck, with simulated SLURM variables."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .slurm_fakes import (
    REPO,
    SLURM_DIR,
    _dry_run,
    _env,
    _flag,
    _split_at,
)

# ---------------------------------------------------------------- preprocess.sbatch (dry run)

def _raw_egoexo4d(root: Path, split: str = "train") -> Path:
    """The least an Ego-Exo4D download needs for the preprocessor's --check: takes.json and one
    take's body-pose labels."""
    body = root / "annotations" / "ego_pose" / split / "body" / "annotation"
    body.mkdir(parents=True)
    (body / "uid1.json").write_text("{}")
    (root / "takes.json").write_text(json.dumps([{"take_uid": "uid1", "take_name": "cook_1"}]))
    return root


def test_preprocess_egoexo4d_mpi_ranks_across_all_nodes(fake_bin, tmp_path):
    raw = _raw_egoexo4d(tmp_path / "raw", "val")
    env = _env(fake_bin, 4, SLURM_NTASKS="64", RAW_DIR=str(raw), SPLIT="val")
    (cmd,) = _dry_run("preprocess.sbatch", env, "--takes-per-shard", "2")
    srun, program = _split_at(cmd, "python")
    assert _flag(srun, "--nodes") == "4"
    assert _flag(srun, "--ntasks") == "64"
    assert _flag(srun, "--mpi") == "pmix"
    assert program[:2] == ["-m", "preprocess.egoexo4d"]
    assert _flag(program, "--root") == str(raw)
    assert _flag(program, "--out") == "data/egoexo4d/val"
    assert _flag(program, "--split") == "val"
    assert program[-2:] == ["--takes-per-shard", "2"]


def test_preprocess_walking_tours_over_mpi_in_a_container(fake_bin, tmp_path):
    env = _env(fake_bin, 1, SLURM_NTASKS="10", RAW_DIR=str(tmp_path), SOURCE="walking_tours",
               CONTAINER_IMAGE="/shared/ego.sqsh")
    check, cmd = _dry_run("preprocess.sbatch", env)
    srun, program = _split_at(cmd, "python")
    assert _flag(srun, "--nodes") == "1"
    assert _flag(srun, "--ntasks") == "10"
    assert _flag(srun, "--mpi") == "pmix"
    assert _flag(srun, "--container-image") == "/shared/ego.sqsh"
    assert program == ["-m", "preprocess.walking_tours", "--videos", str(tmp_path),
                       "--out", "data/walking_tours"]
    # the check runs in the container as one task (printed, not run, under DRY_RUN=1)
    assert _flag(check, "--ntasks") == "1" and check[-1] == "--check"
    assert _flag(check, "--container-image") == "/shared/ego.sqsh"


@pytest.mark.parametrize(("extra", "args", "message"), [
    ({"RAW_DIR": ""}, [], "RAW_DIR is not set"),
    ({"SOURCE": "ego4d"}, [], "SOURCE=ego4d"),
    ({}, ["--workers", "2"], "unrecognized arguments: --workers 2"),  # the preprocessor's own parser
    ({"SPLIT": "val"}, [], "no body-pose labels for split 'val'"),  # the raw data, checked
    ({"SOURCE": "walking_tours"}, [], "no videos"),
])
def test_preprocess_rejects_bad_input_with_one_line_before_srun(fake_bin, tmp_path, extra, args,
                                                                  message):
    env = {**_env(fake_bin), "RAW_DIR": str(_raw_egoexo4d(tmp_path / "raw")), **extra,
           "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(SLURM_DIR / "preprocess.sbatch"), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""  # no srun printed
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    if extra.get("RAW_DIR") != "":  # (an unset RAW_DIR prints the usage first)
        assert len(lines) == 1, lines


# ------------------------------------------------------------------ evaluate.sbatch (dry run)

def _run_dir(root: Path) -> Path:
    """A training run folder as the evaluation checks it: config.yaml and a complete checkpoint."""
    step = root / "checkpoints" / "step_0000004"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("{}")
    shutil.copy(REPO / "configs" / "egoagent_300m.yaml", root / "config.yaml")
    return root


def _knn(root: Path) -> dict[str, str]:
    for split in ("train", "val"):
        (root / split / "n01440764").mkdir(parents=True)
    return {"KNN_TRAIN": str(root / "train"), "KNN_VAL": str(root / "val")}


def test_evaluate_exports_the_run_then_evaluates_on_8_gpus_with_knn(fake_bin, tmp_path):
    run = _run_dir(tmp_path / "runs" / "egoagent_300m")
    env = _env(fake_bin, 1, RUN_DIR=str(run), **_knn(tmp_path / "in100"))
    export, evaluate = _dry_run("evaluate.sbatch", env, "--batch_size", "64")
    assert export[export.index("python"):] == [
        "python", "launch/export.py", "--checkpoint", str(run), "--out", f"{run}/export"]
    _, torchrun = _split_at(evaluate, "torchrun")
    assert _flag(torchrun, "--nproc_per_node") == "8"
    assert _flag(torchrun, "--model") == f"{run}/export"
    assert _flag(torchrun, "--task") == "all"
    assert _flag(torchrun, "--out") == f"{run}/eval"
    assert _flag(torchrun, "--knn-train") == str(tmp_path / "in100" / "train")  # k-NN included
    assert _flag(torchrun, "--knn-val") == str(tmp_path / "in100" / "val")
    assert torchrun[-2:] == ["--batch_size", "64"]


def test_evaluate_an_existing_export_skips_the_export(fake_bin, tmp_path):
    model = tmp_path / "models" / "ego"
    model.mkdir(parents=True)
    shutil.copy(REPO / "configs" / "egoagent_300m.yaml", model / "config.yaml")
    env = _env(fake_bin, 1, MODEL_DIR=str(model), TASK="act", DATA=str(tmp_path))
    (cmd,) = _dry_run("evaluate.sbatch", env)
    assert "launch/evaluate.py" in cmd and "launch/export.py" not in cmd
    assert _flag(cmd, "--task") == "act"
    assert _flag(cmd, "--out") == f"{model}/eval"
    assert _flag(cmd, "--data") == str(tmp_path)
    assert "--knn-train" not in cmd  # act needs no k-NN


@pytest.mark.parametrize(("case", "message"), [
    ("no_imagenet100", "--knn-train data/imagenet100/train does not exist"),
    ("no_checkpoint", "holds no complete checkpoint"),
    ("bad_argument", "unrecognized arguments: --batchsize"),
])
def test_evaluate_rejects_bad_input_with_one_line_before_srun(fake_bin, tmp_path, case, message):
    run = _run_dir(tmp_path / "run")
    env = {**_env(fake_bin, 1, RUN_DIR=str(run)), "DRY_RUN": "1"}
    args = []
    if case == "no_checkpoint":
        shutil.rmtree(run / "checkpoints")
    if case != "no_imagenet100":
        env.update(_knn(tmp_path / "in100"))
    if case == "bad_argument":
        args = ["--batchsize", "4"]
    proc = subprocess.run(["bash", str(SLURM_DIR / "evaluate.sbatch"), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


# ------------------------------------------------------------------------------- shellcheck

@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_passes_on_every_launch_script():
    scripts = sorted(str(p) for p in SLURM_DIR.iterdir() if p.suffix in (".sh", ".sbatch"))
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
