"""What a user sees first: --help of every command (usage, defaults, no warnings), the demo's
usage, the resolved config and its keys, and the SLURM scripts' usage outside SLURM."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_ego.config import Config, load_config
from megatron_ego.config_keys import config_keys

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(*cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def test_demo_help_prints_usage_and_runs_nothing():
    proc = _run("bash", "launch/demo.sh", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "make demo" in proc.stdout
    assert "== 1/5" not in proc.stdout + proc.stderr  # no stage started


def test_demo_rejects_an_unknown_argument_with_one_line():
    proc = _run("bash", "launch/demo.sh", "--steps=10")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown argument '--steps=10'")
    assert "== 1/5" not in proc.stdout


def test_demo_policy_help_prints_usage_and_runs_nothing():
    proc = _run("bash", "launch/demo_policy.sh", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "make demo-policy" in proc.stdout
    assert "== 1/3" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("cmd", [
    ["launch/pretrain.py"], ["launch/evaluate.py"], ["launch/export.py"],
    ["-m", "preprocess.demo_world"], ["-m", "megatron_ego.eval.demo_summary"],
    ["-m", "preprocess.trifinger_demos"],
])
def test_help_shows_the_docstring_usage_and_defaults_without_warnings(cmd):
    proc = _run(PY, *cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "(default: " in proc.stdout
    source = ROOT / (cmd[1].replace(".", "/") + ".py" if cmd[0] == "-m" else cmd[0])
    first_doc_line = source.read_text().split('"""')[1].strip().splitlines()[0]
    assert first_doc_line in proc.stdout


def test_preprocess_help_prints_no_warning_before_its_usage():
    proc = _run(PY, "-m", "preprocess.egoexo4d", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("usage:")


def test_evaluate_task_help_names_every_task():
    proc = _run(PY, "launch/evaluate.py", "--help")
    task_help = proc.stdout.split("--task")[1].split("--out")[0]
    for task in ("knn", "retrieval", "motion", "all"):
        assert task in task_help


def test_print_config_applies_overrides_and_starts_nothing():
    proc = _run(PY, "launch/pretrain.py", "--config", "configs/tiny_cpu.yaml",
                "--optim.lr=1.5e-4", "--print-config")
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["optim"]["lr"] == 1.5e-4
    resolved = load_config("configs/tiny_cpu.yaml", ["--optim.lr=1.5e-4"])
    assert list(printed) == [f.name for f in dataclasses.fields(resolved)]
    assert printed["model"]["num_layers"] == resolved.model.num_layers == 4  # from the YAML
    assert printed["model"]["rotary_base"] == 10000  # a default, written out too


def test_print_config_with_an_unknown_key_is_a_one_line_error():
    proc = _run(PY, "launch/pretrain.py", "--config", "configs/tiny_cpu.yaml",
                "--optim.no_such_key=1", "--print-config")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no_such_key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_list_keys_names_every_field_with_its_documentation():
    cfg = Config()
    keys = config_keys(cfg)
    expected = [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg)
                for f in dataclasses.fields(getattr(cfg, s.name))]
    assert [k.name for k in keys] == expected
    undocumented = [k.name for k in keys if not k.doc]
    assert not undocumented, f"fields without a docstring in config.py: {undocumented}"
    proc = _run(PY, "launch/pretrain.py", "--config", "configs/tiny_cpu.yaml", "--list-keys")
    assert proc.returncode == 0, proc.stderr
    assert "--model.num_layers=4  (int)" in proc.stdout  # the tiny config's resolved value
    assert "Transformer layers in the trunk" in proc.stdout


@pytest.mark.parametrize("script", ["pretrain.sbatch", "preprocess.sbatch", "evaluate.sbatch"])
def test_sbatch_scripts_print_usage_outside_slurm(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    helped = _run("bash", f"launch/slurm/{script}", "--help", env=env)
    assert helped.returncode == 0 and "sbatch" in helped.stdout and "#SBATCH" not in helped.stdout
    outside = _run("bash", f"launch/slurm/{script}", env=env)
    assert outside.returncode == 2
    assert helped.stdout.splitlines()[0] in outside.stderr  # the usage, then the error line
    assert outside.stderr.strip().splitlines()[-1].startswith("error: SLURM_JOB_ID is not set")
    assert outside.stdout == ""
