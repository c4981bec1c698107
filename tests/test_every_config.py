"""Every shipped config (configs/**/*.yaml) trains: 2 optimizer steps on CPU on generated data,
with its sizes shrunk by overrides and everything else (losses, weights, mixing ratio, switches)
as shipped. One process trains them one after the other (one import of DeepSpeed and
megatron-core); each config is its own test case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .pretrain_runs import ROOT, _run

pytestmark = [pytest.mark.pipeline]

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
SHRINK = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
          "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32",
          "--model.head_out_dim=128", "--model.image_size=64", "--model.local_crop_size=32",
          "--model.recompute=false", "--model.transformer_impl=local", "--data.num_workers=0",
          "--data.num_local_crops=2", "--run.micro_batch_size=2", "--run.global_batch_size=2",
          "--run.precision=fp32", "--run.log_interval=1"]

RUNNER = """
import json, sys, traceback
from megatron_ego.config import load_config
from megatron_ego.training.distributed import init_distributed
from megatron_ego.training.trainer import Trainer
out, configs, overrides = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
dist = init_distributed()
results = {}
for i, path in enumerate(configs):
    try:
        cfg = load_config(path, [*overrides, f"--run.name=c{i}"])
        trainer = Trainer(cfg, "configs/zero2.json", dist, resume="none")
        state = trainer.fit(max_steps=2)
        results[path] = {"steps": state.step}
    except Exception as err:
        results[path] = {"error": traceback.format_exc()[-1500:]}
json.dump(results, open(out, "w"))
"""


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("every_config")
    run = _run([sys.executable, "-c", RUNNER, str(out / "results.json"), ",".join(CONFIGS),
                *SHRINK, f"--data.egoexo4d_path={demo_data['ego']}",
                f"--data.walking_tours_path={demo_data['wt']}", f"--run.output_dir={out}"])
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(Path(out / "results.json").read_text())


def test_the_configs_are_found():
    assert "configs/tiny_cpu.yaml" in CONFIGS and "configs/ablations/no_represent.yaml" in CONFIGS
    assert len(CONFIGS) >= 9


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_two_steps(trained, config):
    result = trained[config]
    assert "error" not in result, result.get("error")
    assert result["steps"] == 2
