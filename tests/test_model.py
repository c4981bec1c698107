"""The EgoAgent network: megatron GPTModel trunk, parameter counts, shapes, shape errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from megatron.core.models.gpt import GPTModel

from megatron_ego.config import load_config
from megatron_ego.model.backbone import transformer_engine_available
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.model.summary import build_on_meta, summarize

from .conftest import random_clip_batch


def test_backbone_is_megatron_gptmodel_with_rmsnorm_rope_swiglu(tiny_model):
    gpt = tiny_model.backbone.gpt
    assert isinstance(gpt, GPTModel)
    assert gpt.position_embedding_type == "rope"
    cfg = tiny_model.backbone.config
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and not cfg.add_bias_linear
    assert cfg.layernorm_epsilon == 1e-6
    layer = gpt.decoder.layers[0]
    assert isinstance(layer.input_layernorm, torch.nn.RMSNorm)
    assert isinstance(tiny_model.backbone.final_norm, torch.nn.RMSNorm)


@pytest.mark.parametrize("config, expected", [
    ("configs/egoagent_300m.yaml", 282.6e6),
    ("configs/egoagent_1b.yaml", 1.130e9),
])
def test_trunk_parameter_counts_match_the_paper(config, expected):
    model = build_on_meta(load_config(config))
    assert model.backbone.trunk_parameters() == pytest.approx(expected, rel=0.005)


def test_meta_summary_counts_equal_a_real_build(tiny_cfg):
    real = summarize(EgoAgent(tiny_cfg.model), tiny_cfg)
    meta = summarize(build_on_meta(tiny_cfg), tiny_cfg)
    assert real == meta
    assert real["trunk_parameters"] == sum(
        p.numel() for n, p in EgoAgent(tiny_cfg.model).named_parameters()
        if n.startswith("backbone.") and "embedding" not in n
    )


def test_summary_cli_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "megatron_ego.model.summary", "--config", "configs/egoagent_1b.yaml"],
        capture_output=True, text=True, check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["backbone_class"] == "megatron.core.models.gpt.gpt_model.GPTModel"
    assert summary["sequence_length"] == {"student": 796, "feature_global": 197,
                                          "feature_local": 50}
    assert summary["head_parameters"]["represent_head"] == summary["head_parameters"]["predict_head"]


def test_forward_backward_shapes(tiny_cfg, tiny_model):
    c, b = tiny_cfg.model, 2
    batch = random_clip_batch(tiny_cfg, b)
    out = tiny_model(batch["frames"], batch["poses"], batch["global_crops"], batch["local_crops"])
    k = c.head_out_dim
    assert out.actions.shape == (b, c.num_steps, 4, 5, 17)
    assert out.future_state.shape == (b, c.num_steps, c.hidden_size)
    assert out.future_logits.shape == (b, c.num_steps - 1, k)
    assert out.global_logits.shape == (b, 2, k)
    assert out.local_logits.shape == (b, tiny_cfg.data.num_local_crops, k)
    loss = out.actions.square().mean() + out.future_logits.logsumexp(-1).mean()
    loss.backward()
    assert tiny_model.backbone.gpt.decoder.layers[0].mlp.linear_fc1.weight.grad.abs().sum() > 0


def test_represent_accepts_global_and_local_crop_sizes(tiny_cfg, tiny_model):
    c = tiny_cfg.model
    feat, logits = tiny_model.represent(torch.randn(3, 3, c.image_size, c.image_size))
    assert feat.shape == (3, c.hidden_size) and logits.shape == (3, c.head_out_dim)
    feat, _ = tiny_model.represent(torch.randn(3, 3, c.local_crop_size, c.local_crop_size))
    assert feat.shape == (3, c.hidden_size)


def test_prototypes_are_unit_norm_in_effect(tiny_cfg, tiny_model):
    with torch.no_grad():
        tiny_model.represent_head.prototypes.mul_(7.0)  # the gain is fixed: scaling V changes nothing
    x = torch.randn(4, tiny_cfg.model.hidden_size)
    a = tiny_model.represent_head(x)
    with torch.no_grad():
        tiny_model.represent_head.prototypes.div_(7.0)
    torch.testing.assert_close(a, tiny_model.represent_head(x))
    assert a.abs().max() <= 1.0 + 1e-5  # cosine similarities


def test_wrong_shapes_name_the_expected_value(tiny_cfg, tiny_model):
    c = tiny_cfg.model
    batch = random_clip_batch(tiny_cfg, 2)
    with pytest.raises(ValueError, match=f"{c.image_size}, {c.image_size}"):
        tiny_model(torch.randn(2, c.num_steps, 3, 48, 48), batch["poses"])
    with pytest.raises(ValueError, match="4, 5, 17"):
        tiny_model(batch["frames"], torch.randn(2, c.num_steps, 3, 5, 17))
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny_model.represent(torch.randn(1, 3, 40, 40))


@pytest.mark.skipif(not transformer_engine_available(),
                    reason="Transformer Engine is GPU-only and not installed on CPU machines")
def test_transformer_engine_spec_builds_the_same_trunk():
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear

    cfg = load_config("configs/tiny_cpu.yaml", ["--model.transformer_impl=transformer_engine"])
    model = EgoAgent(cfg.model).cuda()
    assert model.backbone.spec_name == "transformer_engine"
    layer = model.backbone.gpt.decoder.layers[0]
    assert isinstance(layer.self_attention.linear_qkv, TELayerNormColumnParallelLinear)
    local = EgoAgent(load_config("configs/tiny_cpu.yaml").model)
    assert model.backbone.trunk_parameters() == local.backbone.trunk_parameters()
    frames = torch.randn(2, 4, 3, 64, 64, device="cuda")
    poses = torch.randn(2, 4, 4, 5, 17, device="cuda")
    out = model(frames, poses)
    assert torch.isfinite(out.actions).all()
