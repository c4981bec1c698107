"""Exit codes of launch/pretrain.py (issue 23 item 8): one number per reason a job ends, the same
in the code, the README and docs/reliability.md, so that a requeue policy can rely on them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ego.config import ConfigError, load_config
from megatron_ego.runtime import exit_codes

ROOT = Path(__file__).resolve().parents[1]
CODES = {"FINISHED": 0, "CRASHED": 1, "INPUT_ERROR": 2, "STOPPED": 3, "PREEMPTED": 75}


def test_the_codes_are_the_planned_numbers_and_distinct():
    assert {name: getattr(exit_codes, name) for name in CODES} == CODES
    assert len(set(CODES.values())) == len(CODES)


@pytest.mark.parametrize("doc", ["README.md", "docs/reliability.md"])
def test_the_docs_tables_list_every_code_with_its_requeue_answer(doc):
    text = (ROOT / doc).read_text()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*\| (yes|no) \|$",
                                                               text, re.MULTILINE)}
    assert set(rows) == set(CODES.values()), rows
    assert all(rows[code].endswith("| no |") for code in (0, 1, 2, 3))
    assert rows[75].endswith("| yes |")


def test_negative_max_steps_is_refused_with_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", "configs/tiny_cpu.yaml",
         f"--run.output_dir={tmp_path}", "--max_steps", "-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == exit_codes.INPUT_ERROR
    assert out.stderr.strip().splitlines() == [
        "error: --max_steps=-3 must be >= 1 (leave it out to train to schedule.train_iters)"]
    assert list(tmp_path.iterdir()) == []  # nothing written


class _FakeTrainer:
    """Stands in for training.trainer.Trainer: `outcome` says how fit() ends."""

    outcome = "finish"

    def __init__(self, *args, **kwargs):
        self.preempted = False

    def close(self):
        pass

    def fit(self, max_steps=None):
        from megatron_ego.training.checkpoint import CheckpointError
        from megatron_ego.training.guards import TrainingStopped

        if self.outcome == "preempt":
            self.preempted = True
        elif self.outcome == "diverge":
            raise TrainingStopped("diverged: ...")
        elif self.outcome == "disk_full":
            raise CheckpointError("No space left on device while writing ...")
        elif self.outcome == "bad_input":
            raise ConfigError("data.egoexo4d_path ...")


@pytest.mark.parametrize("outcome, code", [
    ("finish", exit_codes.FINISHED), ("preempt", exit_codes.PREEMPTED),
    ("diverge", exit_codes.STOPPED), ("disk_full", exit_codes.STOPPED),
    ("bad_input", exit_codes.INPUT_ERROR)])
def test_each_way_a_run_ends_has_its_code(monkeypatch, outcome, code):
    from launch import pretrain
    from megatron_ego.training import distributed, ds_config, run_folder, trainer
    from megatron_ego.versions import check_versions  # noqa: F401  (imported by run)

    monkeypatch.setattr(trainer, "Trainer", _FakeTrainer)
    monkeypatch.setattr(_FakeTrainer, "outcome", outcome)
    monkeypatch.setattr(run_folder, "check_data_paths", lambda cfg: None)
    monkeypatch.setattr(distributed, "init_distributed", lambda: None)
    monkeypatch.setattr(ds_config, "load_ds_config", lambda *a: {})
    args = argparse.Namespace(ds_config="configs/zero2.json", resume="auto", overwrite=False,
                              max_steps=None)
    assert pretrain.run(load_config("configs/tiny_cpu.yaml"), args) == code
