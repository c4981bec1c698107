"""The training step reads nothing back from the device: no Tensor.item / .cpu / .tolist (nor
bool(tensor)) in our code during a step; one .tolist() per logging interval.

The trainer runs in a child process (DeepSpeed and megatron's process groups stay out of the
pytest process). Counted are calls whose caller is a file of the megatron_ego package: DeepSpeed's
ZeRO-2 step has its own (its overflow check), and torch's CPU Adam reads its step counter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_ego.training.interval import IntervalStats, StepTerms

pytestmark = [pytest.mark.pipeline]

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import collections, itertools, json, os, sys, tempfile, traceback
os.environ["CUDA_VISIBLE_DEVICES"] = ""
import torch
from megatron_ego.config import load_config
from megatron_ego.training.distributed import init_distributed
from megatron_ego.training.interval import IntervalStats
from megatron_ego.training.trainer import Trainer
from tests.batches import random_clip_batch

cfg = load_config("configs/tiny_cpu.yaml", [
    "--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
    "--model.image_size=32", "--model.local_crop_size=16", "--model.head_hidden_dim=64",
    "--model.head_bottleneck_dim=16", "--model.head_out_dim=32", "--run.micro_batch_size=2",
    "--run.global_batch_size=4", f"--run.output_dir={tempfile.mkdtemp()}",
    "--run.precision=" + sys.argv[1]])
trainer = Trainer(cfg, "configs/zero2.json", init_distributed())
ego = random_clip_batch(cfg, 2, seed=1)
walking = {"source": "walking_tours", "global_crops": ego["global_crops"],
           "local_crops": ego["local_crops"]}
loader = itertools.cycle([ego, walking, ego, ego])
for _ in range(2):
    trainer.train_step(loader)

PACKAGE = os.path.join(os.getcwd(), "megatron_ego")
calls = collections.Counter()
original = {n: getattr(torch.Tensor, n) for n in ("item", "cpu", "tolist", "__bool__")}

def counting(name):
    def call(self, *args, **kwargs):
        caller = traceback.extract_stack(limit=2)[0].filename
        if caller.startswith(PACKAGE):
            calls[f"{name} {os.path.relpath(caller)}"] += 1
        return original[name](self, *args, **kwargs)
    return call

def counted(fn):
    calls.clear()
    for name in original:
        setattr(torch.Tensor, name, counting(name))
    try:
        out = fn()
    finally:
        for name, f in original.items():
            setattr(torch.Tensor, name, f)
    return out, dict(calls)

stats = IntervalStats(1)
def two_steps():
    for _ in range(2):
        stats.add(trainer.state.step, trainer.train_step(loader).terms, {})
_, in_steps = counted(two_steps)
(rows, means, by_source), in_flush = counted(stats.flush)

before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
bad = dict(ego, poses=ego["poses"].clone().fill_(float("nan")))
loader = iter([bad, ego])
stats.add(trainer.state.step, trainer.train_step(loader).terms, {})
bad_rows, _, _ = stats.flush()
unchanged = all(torch.equal(before[n], p) for n, p in trainer.engine.module.named_parameters())
low = dict(trainer.teacher_forward.named_parameters())
teacher_copy = {"dtypes": sorted({str(p.dtype) for p in low.values()}),
                "equal": all(torch.equal(low[n], p.to(low[n].dtype))
                             for n, p in trainer.teacher.named_parameters()),
                "fp32_teacher": sorted({str(p.dtype) for p in trainer.teacher.parameters()})}
print(json.dumps({"in_steps": in_steps, "in_flush": in_flush, "rows": rows,
                  "by_source": sorted(by_source), "nonfinite": bad_rows[0]["nonfinite"],
                  "unchanged_after_nonfinite": unchanged, "teacher_copy": teacher_copy}))
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_has_no_host_reads_and_the_interval_one(precision):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                     "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, precision], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["in_steps"] == {}, result["in_steps"]  # nothing read back during the steps
    assert result["in_flush"] == {"tolist megatron_ego/training/interval.py": 1}
    assert len(result["rows"]) == 2 and all(r["loss"] > 0 for r in result["rows"])
    assert result["by_source"] == ["egoexo4d", "walking_tours"]
    # a non-finite micro-batch is flagged, and DeepSpeed's overflow check skipped the update
    assert result["nonfinite"] > 0 and result["unchanged_after_nonfinite"]
    # bf16 runs: the teacher forward runs on a bf16 copy refreshed after each EMA update
    copy = result["teacher_copy"]
    assert copy["fp32_teacher"] == ["torch.float32"] and copy["equal"]
    assert copy["dtypes"] == (["torch.bfloat16"] if precision == "bf16" else ["torch.float32"])


def test_interval_means_match_per_micro_batch_arithmetic():
    stats = IntervalStats()
    for step, (a, b) in enumerate([(1.0, 3.0), (5.0, 7.0)], start=1):
        terms = StepTerms()
        terms.add("egoexo4d", {"loss": torch.tensor(a), "loss_act": torch.tensor(a / 10)})
        terms.add("walking_tours", {"loss": torch.tensor(b)})
        assert float(terms.means()["loss"]) == (a + b) / 2
        stats.add(step, terms, {"lr": 0.1 * step})
    rows, means, by_source = stats.flush()
    assert [r["loss"] for r in rows] == [2.0, 6.0] and rows[1]["lr"] == pytest.approx(0.2)
    assert rows[0]["loss_act"] == pytest.approx(0.1)  # only the micro-batches that have it
    assert means["loss"] == 4.0 and means["loss_act"] == pytest.approx(0.3)
    assert by_source == {"egoexo4d": {"loss": 3.0, "loss_act": pytest.approx(0.3)},
                         "walking_tours": {"loss": 5.0}}
    assert len(stats) == 0 and stats.flush() == ([], {}, {})


def test_tensorboard_gets_interval_averages_per_source_tags_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_ego.training.metrics import MetricsLogger

    logger = MetricsLogger(str(tmp_path), True, 2, 4, 0, config_text="model:\n  num_layers: 2")
    for step in (1, 2):
        logger.log(step, {"loss": float(step), "sources": {"egoexo4d": 1}, "step_s": 0.5,
                          "data_wait_s": 0.1})
    logger.log_averages(2, {"loss": 1.5}, {"egoexo4d": {"loss": 1.25}})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(2, 1.5)]
    assert [e.value for e in events.Scalars("egoexo4d/loss")] == [1.25]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "num_layers: 2" in text
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"sources", "step_s", "data_wait_s"} <= set(records[0])
