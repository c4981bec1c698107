"""bench/cluster_plan.py: checkpoint bytes against a real checkpoint, docs/cluster.md's tables
against its output, and the batch splits against the trainer's own check."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

from megatron_ego.config import ConfigError, load_config
from megatron_ego.model.summary import build_on_meta, count

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _plan():
    spec = importlib.util.spec_from_file_location("cluster_plan", ROOT / "bench" / "cluster_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoint_bytes_match_a_real_checkpoint(tiny_run):
    """Within 3 % of the files a real (fp32, 1-rank) checkpoint holds."""
    plan = _plan()
    folder = tiny_run["checkpoint"]
    cfg = load_config(str(tiny_run["run"] / "config.yaml"))
    predicted = plan.checkpoint_bytes(cfg, count(build_on_meta(cfg)))
    actual = sum(p.stat().st_size for p in folder.iterdir())
    assert 0.97 * actual <= predicted <= actual, (predicted, actual)


def test_the_doc_prints_the_tables_of_the_current_configs():
    plan = _plan()
    mfu = plan.paper_mfu()
    tables = plan.tables("A100", mfu)
    doc = (ROOT / "docs" / "cluster.md").read_text()
    for line in tables.splitlines():
        if line.startswith("|"):
            assert line in doc, f"docs/cluster.md is out of date (bench/cluster_plan.py): {line}"
    prose = " ".join(doc.split())
    assert round(mfu, 3) == 0.365 and "MFU used, 0.365" in prose


@pytest.mark.parametrize("gpus", [8, 32, 48])
@pytest.mark.parametrize("config", ["stage1_300m", "egoagent_300m", "stage1_1b", "egoagent_1b"])
def test_a_split_the_plan_gives_is_one_the_trainer_accepts(config, gpus):
    from megatron_ego.training.ds_config import load_ds_config

    plan = _plan()
    cfg = load_config(f"configs/{config}.yaml")
    text = plan.split(cfg, gpus)
    if text.startswith("n/a"):
        with pytest.raises(ConfigError):
            load_ds_config("configs/zero2.json", cfg, gpus)
    else:
        micro, accumulation = (int(x) for x in text.split(" x "))
        ds = load_ds_config("configs/zero2.json", cfg, gpus)
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
            micro, accumulation)
