"""The two-stage recipe: stage 1 (representation alone, single frames) for a few steps on
generated data, then stage 2 started from it with `run.init_from`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from megatron_ego.training.checkpoint import safe_load

from .pretrain_runs import _run

pytestmark = [pytest.mark.pipeline]

PY = sys.executable
SMALL = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
         "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32",
         "--model.head_out_dim=128", "--model.image_size=64", "--model.local_crop_size=32",
         "--model.recompute=false", "--data.num_workers=0", "--data.num_local_crops=2",
         "--run.micro_batch_size=2", "--run.global_batch_size=2", "--run.precision=fp32",
         "--schedule.warmup_iters=1", "--run.log_interval=1"]

# Builds the stage-2 trainer (one process) and saves what it starts from.
PROBE = """
import logging, sys, torch
from megatron_ego.config import load_config
from megatron_ego.runtime.device import seed_everything
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.training.distributed import init_distributed
from megatron_ego.training.init_from import shared_names
from megatron_ego.training.trainer import Trainer
logging.basicConfig(level=logging.INFO)
cfg = load_config(sys.argv[2], sys.argv[3:])
t = Trainer(cfg, "configs/zero2.json", init_distributed(), resume="auto")
names = shared_names(t.engine.module)
seed_everything(cfg.run.seed)
scratch = EgoAgent(cfg.model).state_dict()
torch.save({
    "step": t.state.step, "micro_step": t.state.micro_step,
    "adam_state": len(t.optimizer.optimizer.state),
    "centers": [t.objective.represent_loss.center.clone(),
                t.objective.represent_loss.center_updates.clone()],
    "student": {k: v.clone() for k, v in t.engine.module.state_dict().items() if k in names},
    "teacher": {k: v.clone() for k, v in t.teacher.state_dict().items() if k in names},
    "scratch": {k: scratch[k].clone() for k in names},
    "fresh_student": {k: v.clone() for k, v in t.engine.module.state_dict().items()
                      if k.startswith("predict_head.")},
    "fresh_scratch": {k: v.clone() for k, v in scratch.items() if k.startswith("predict_head.")},
}, sys.argv[1])
"""


def _data(demo_data) -> list[str]:  # noqa: F811
    return [f"--data.egoexo4d_path={demo_data['ego']}",
            f"--data.walking_tours_path={demo_data['wt']}"]


@pytest.fixture(scope="module")
def stage1(demo_data, tmp_path_factory) -> Path:  # noqa: F811
    """configs/stage1_300m.yaml shrunk, 2 steps on WalkingTours frames alone, one process."""
    out = tmp_path_factory.mktemp("stage1")
    run = _run([PY, "launch/pretrain.py", "--config", "configs/stage1_300m.yaml", *SMALL,
                *_data(demo_data), "--schedule.train_iters=2", f"--run.output_dir={out}",
                "--run.name=stage1", "--resume", "none"])
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "stage1" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all("loss_represent" in r and "loss_act" not in r and "loss_predict" not in r
               for r in records)  # the representation alone
    return out / "stage1"


def test_stage2_starts_from_stage1_weights_with_a_fresh_optimizer(demo_data, stage1, tmp_path):  # noqa: F811
    from megatron_ego.export.checkpoint import checkpoint_networks, resolve_checkpoint

    probe = tmp_path / "probe.pt"
    run = _run([PY, "-c", PROBE, str(probe), "configs/egoagent_300m.yaml", *SMALL,
                *_data(demo_data), "--data.walking_tours_ratio=0.25",
                f"--run.output_dir={tmp_path}", "--run.name=stage2", f"--run.init_from={stage1}"])
    assert run.returncode == 0, run.stderr[-3000:]
    log = [line for line in run.stderr.splitlines() if "init_from checkpoint" in line]
    assert len(log) == 1 and "step_0000002" in log[0] and "initialised afresh" in log[0]
    assert "predict_head" in log[0] and "optimizer state" in log[0]
    got = safe_load(probe)
    _, networks = checkpoint_networks(resolve_checkpoint(stage1), ("teacher", "student"))
    names = sorted(got["student"])
    assert any(n.startswith("backbone.") for n in names) and "queries.state" in names
    assert any(n.startswith("represent_head.") for n in names)
    assert any(n.startswith("image_projector.") for n in names)
    for network in ("student", "teacher"):
        source = networks[network][0]
        assert all(torch.equal(got[network][n], source[n]) for n in names), network
    # stage 1 moved the weights: what was loaded is not the seed's initialisation
    assert not all(torch.equal(got["student"][n], got["scratch"][n]) for n in names)
    assert not torch.equal(got["student"]["queries.state"], got["teacher"]["queries.state"])
    # everything else starts afresh: modules, optimizer, step, data position, DINO centers
    assert all(torch.equal(v, got["fresh_scratch"][k]) for k, v in got["fresh_student"].items())
    assert got["adam_state"] == 0 and got["step"] == 0 and got["micro_step"] == 0
    assert got["centers"][0].abs().sum() == 0 and int(got["centers"][1]) == 0


def test_init_from_with_another_architecture_is_one_line(demo_data, stage1, tmp_path):  # noqa: F811
    run = _run([PY, "launch/pretrain.py", "--config", "configs/egoagent_300m.yaml", *SMALL,
                *_data(demo_data), "--model.hidden_size=128", f"--run.output_dir={tmp_path}",
                "--run.name=stage2", f"--run.init_from={stage1}"])
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-2000:]
    assert "tensor" in errors[0] and "shape" in errors[0] and "(64" in errors[0]


def test_init_from_a_missing_folder_is_one_line(demo_data, tmp_path):  # noqa: F811
    run = _run([PY, "launch/pretrain.py", "--config", "configs/egoagent_300m.yaml", *SMALL,
                *_data(demo_data), f"--run.output_dir={tmp_path}", "--run.name=stage2",
                f"--run.init_from={tmp_path / 'nowhere'}"])
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run.init_from" in errors[0], run.stderr[-2000:]
