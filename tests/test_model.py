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
from megatron_ego.model.egoagent import EgoAgent, last_visible_anchor
from megatron_ego.model.fused import FusedRMSNorm, SwiGLUMLP
from megatron_ego.model.summary import build_on_meta, summarize

from .batches import random_clip_batch


def test_backbone_is_megatron_gptmodel_with_rmsnorm_rope_swiglu(tiny_model):
    gpt = tiny_model.backbone.gpt
    assert isinstance(gpt, GPTModel)
    cfg = tiny_model.backbone.config
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and not cfg.add_bias_linear
    assert cfg.layernorm_epsilon == 1e-6
    layer = gpt.decoder.layers[0]
    # local spec: the fused modules of model/fused.py; RoPE is applied in the core attention
    assert gpt.position_embedding_type == "none"
    assert layer.self_attention.core_attention.rotary_base == tiny_model.cfg.rotary_base
    assert isinstance(layer.input_layernorm, FusedRMSNorm) and isinstance(layer.mlp, SwiGLUMLP)
    assert isinstance(tiny_model.backbone.final_norm, FusedRMSNorm)


def test_megatron_builds_the_swiglu_mlp_as_its_own_mlp(tiny_cfg, caplog):
    """megatron-core recognises the fused MLP: no "Unknown MLP type ... Using default kwargs"
    warning, and each layer's MLP holds the tensor-parallel group the layer holds (what megatron
    passes its own MLP)."""
    import logging

    with caplog.at_level(logging.WARNING):
        model = EgoAgent(tiny_cfg.model)
    assert not [r for r in caplog.records if "MLP" in r.getMessage()], caplog.text
    layers = model.backbone.gpt.decoder.layers
    assert len(layers) == tiny_cfg.model.num_layers
    for layer in layers:
        assert type(layer.mlp) is SwiGLUMLP
        assert layer.mlp.tp_group is layer.pg_collection.tp


def test_swiglu_mlp_spec_binds_megatron_018_builder_to_the_fused_mlp(monkeypatch):
    """megatron-core >= 0.18 gives the local spec's MLP as partial(MLP.as_mlp_submodule, ...):
    the fused spec calls the same builder bound to SwiGLUMLP, with the same submodules."""
    import functools

    from megatron.core.transformer.mlp import MLP

    from megatron_ego.model.fused import swiglu_mlp_spec

    def as_mlp_submodule(cls, submodules, config, pg_collection, is_mtp_layer, name=None):
        return cls, submodules, pg_collection.tp

    monkeypatch.setattr(MLP, "as_mlp_submodule", classmethod(as_mlp_submodule), raising=False)
    spec = swiglu_mlp_spec(functools.partial(MLP.as_mlp_submodule, submodules="subs"))
    pgs = type("PG", (), {"tp": "tp-group"})()
    assert spec(config=None, pg_collection=pgs, is_mtp_layer=False) == (SwiGLUMLP, "subs",
                                                                         "tp-group")
    other = functools.partial(print, submodules="subs")  # another builder: left alone
    assert swiglu_mlp_spec(other) is other


def test_fused_elementwise_ops_match_megatron_and_torch():
    """RMSNorm, RoPE and SwiGLU nodes: forward and gradients equal the unfused references."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from megatron_ego.model.fused import rms_norm, rope_tables, rotary, swiglu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 3, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))
    ref = torch.nn.functional.rms_norm(x, (16,), w, 1e-6)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), ref)
    cos, sin = rope_tables(7, 16, 10000.0, torch.float64, x.device)
    assert torch.autograd.gradcheck(lambda a: rotary(a, cos, sin), (x,))
    freqs = torch.outer(torch.arange(7.0, dtype=torch.float64),
                        1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    emb = torch.cat([freqs, freqs], -1)[:, None, None, :]
    torch.testing.assert_close(rotary(x, cos, sin), _apply_rotary_pos_emb_bshd(x, emb),
                               rtol=1e-6, atol=1e-6)  # tables made in fp32, as megatron's
    assert torch.autograd.gradcheck(swiglu, (x,))
    a, b = x.chunk(2, -1)
    torch.testing.assert_close(swiglu(x), torch.nn.functional.silu(a) * b)


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
    # paper Table 8: the action projector reads 4 x 5 x 17, the action head writes 4 x 5 x 17
    assert summary["action_projector_in_channels"] == 4
    assert summary["action_head_out_features"] == 340
    assert "initial_action_head" not in summary["head_parameters"]


def test_paper_action_modules_are_one_conv_and_one_linear(tiny_cfg):
    """model.action_head="linear", action_velocity_inputs=false (the defaults): the actions are
    the Linear's output on the action query, nothing added; no step-0 head, no mean pose."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg.model, action_head="linear", action_velocity_inputs=False)
    model = EgoAgent(cfg).eval()
    assert model.action_projector.proj.in_channels == 4
    assert not hasattr(model, "initial_action_head") and not hasattr(model, "mean_pose")
    assert model.action_head.proj.weight.abs().sum() > 0  # not zero-initialised
    batch = random_clip_batch(tiny_cfg, 2)
    captured = {}
    hook = model.action_head.register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        actions, _ = model.act_and_predict(batch["frames"], batch["poses"])
    hook.remove()
    assert captured["out"].shape == (2, cfg.num_steps, 4, 5, 17)
    assert torch.equal(actions, captured["out"])


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


def test_action_anchor_is_each_joints_last_visible_position():
    # poses [b=1, T=3, 4, P=2, J=2]; joint 0 visible everywhere, joint 1 invisible (x, y, z = 0,
    # as in the data) in the last pose of step 0 and in all of step 1.
    poses = torch.zeros(1, 3, 4, 2, 2)
    for t in range(3):
        for p in range(2):
            poses[0, t, :3, p, 0] = torch.tensor([t, p, 1.0])
            poses[0, t, 3, p, 0] = 1.0
    poses[0, 0, :3, 0, 1] = torch.tensor([5.0, 6.0, 7.0])
    poses[0, 0, 3, 0, 1] = 1.0
    poses[0, 2, :3, :, 1] = 9.0
    poses[0, 2, 3, :, 1] = 1.0
    fallback = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])  # [3, J]
    anchor = last_visible_anchor(poses, fallback)  # [1, T, 3, J]
    assert anchor.shape == (1, 3, 3, 2)
    assert torch.equal(anchor[0, 0], fallback)  # step 0: nothing seen yet
    assert torch.equal(anchor[0, 1, :, 0], torch.tensor([0.0, 1.0, 1.0]))  # last pose of step 0
    assert torch.equal(anchor[0, 2, :, 0], torch.tensor([1.0, 1.0, 1.0]))  # last pose of step 1
    # joint 1: its first pose of step 0 is the last visible one for both later steps
    assert torch.equal(anchor[0, 1, :, 1], torch.tensor([5.0, 6.0, 7.0]))
    assert torch.equal(anchor[0, 2, :, 1], torch.tensor([5.0, 6.0, 7.0]))
    never = poses.clone()
    never[..., 1] = 0.0  # joint 1 never visible: the fallback at every step
    assert torch.equal(last_visible_anchor(never, fallback)[0, :, :, 1], fallback[:, 1].expand(3, 3))


def test_untrained_agent_holds_every_joint_at_its_last_visible_position(tiny_cfg, tiny_model):
    """Zero-initialised head + last-visible anchors = the zero-velocity baseline, also for joints
    that are invisible (x, y, z = 0) in the previous step's last pose."""
    batch = random_clip_batch(tiny_cfg, b=2, seed=3)
    poses = batch["poses"].clone()  # [b, T, 4, P, J]
    poses[:, :, 3] = 1.0
    poses[0, 0, :, -1, 4] = 0.0  # joint 4 missing from the last pose of step 0 (xyz and vis)
    with torch.no_grad():
        actions, _ = tiny_model.act_and_predict(batch["frames"], poses)
    assert torch.equal(actions[0, 1, :3, :, 4],
                       poses[0, 0, :3, -2, 4, None].expand(3, poses.shape[3]))
    assert torch.equal(actions[1, 2, :3], poses[1, 1, :3, -1:].expand_as(actions[1, 2, :3]))


def test_action_projector_reads_velocity_in_metres_per_second():
    from megatron_ego.model.embeddings import ActionProjector

    proj = ActionProjector(hidden_size=8, pose_rate=30.0, velocity_inputs=True)
    poses = torch.zeros(1, 4, 5, 17)  # [n, x/y/z/visibility, P, J]
    poses[0, 0, :, 0] = torch.arange(5) * 0.01  # joint 0 walks 1 cm per frame along x
    poses[0, 3] = 1.0
    poses[0, 3, 2, 1] = 0.0  # joint 1 invisible in pose 2: no velocity into or out of it
    v = proj.velocity(poses)  # [1, 3, 5, 17]
    torch.testing.assert_close(v[0, 0, 1:, 0], torch.full((4,), 0.3))  # 0.01 m x 30 /s
    assert v[0, :, 0].abs().sum() == 0  # the first pose has no predecessor
    assert v[0, :, 2, 1].abs().sum() == 0 and v[0, :, 3, 1].abs().sum() == 0
    poses[0, 0, 2:, 1] = 0.5  # joint 1 jumps while invisible: still no velocity reported
    assert proj.velocity(poses)[0, :, 2:4, 1].abs().sum() == 0
    assert proj(poses).shape == (1, 8)
    assert proj.proj.in_channels == 7  # x, y, z, visibility + velocity x, y, z


def test_predict_head_can_start_as_a_copy_of_the_representation_head(tiny_cfg):
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg.model, predict_head_init="represent")
    model = EgoAgent(cfg)
    rep, pred = model.represent_head.state_dict(), model.predict_head.state_dict()
    assert all(torch.equal(rep[k], pred[k]) for k in rep)
    with torch.no_grad():
        model.predict_head.prototypes.add_(1.0)  # separate weights: the copy does not follow
    assert not torch.equal(model.represent_head.prototypes, model.predict_head.prototypes)
    torch.manual_seed(0)
    default = EgoAgent(dataclasses.replace(tiny_cfg.model, predict_head_init="random"))
    assert not torch.equal(default.represent_head.prototypes, default.predict_head.prototypes)
    assert load_config("configs/egoagent_300m.yaml").model.predict_head_init == "random"


def test_fp8_without_transformer_engine_is_refused_as_its_comment_says(tiny_cfg):
    from megatron_ego.config import ConfigError
    from megatron_ego.model.transformer_config import transformer_config

    tiny_cfg.model.fp8 = True
    with pytest.raises(ConfigError, match="model.fp8=true needs the Transformer Engine"):
        transformer_config(tiny_cfg.model, transformer_engine=False)
    tiny_cfg.model.fp8 = False
    assert transformer_config(tiny_cfg.model).fp8 is None
