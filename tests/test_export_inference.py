"""Export a real (tiny, 4-step) training run and use it through megatron_ego.inference.

The session fixture ``tiny_run`` (tests/conftest.py) renders a small demo world, preprocesses its
train and val takes, pretrains configs/tiny_cpu.yaml for 4 steps in a subprocess and exports the
teacher.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ego.config import Config
from megatron_ego.config_io import from_dict
from megatron_ego.data.decode import load_frame
from megatron_ego.export.format import (
    ExportError,
    module_weights,
    read_export,
    to_local_names,
    to_module_names,
    write_export,
)
from megatron_ego.training.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[1]


def _training_teacher(checkpoint: Path):
    """The teacher exactly as training saved it (trainer_state.pt), as an EgoAgent module."""
    from megatron_ego.model.egoagent import EgoAgent as Module

    state = safe_load(checkpoint / "trainer_state.pt")
    cfg = from_dict(Config, state["config"])
    teacher = Module(cfg.model)
    teacher.load_state_dict(module_weights(state["teacher"]), strict=False)
    return teacher.eval(), cfg


def _training_student(checkpoint: Path, cfg):
    """The student's fp32 weights consolidated from the ZeRO-2 partitions, as a module."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from megatron_ego.model.egoagent import EgoAgent as Module

    student = Module(cfg.model)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), checkpoint.name)
    student.load_state_dict(module_weights(weights), strict=False)
    return student.eval()


def _clip_inputs(seed: int = 0, n: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 4, size + 16, size, 3), generator=g, dtype=torch.uint8)
    poses = torch.randn(n, 20, 17, 4, generator=g) * 0.4
    poses[..., 3] = (torch.rand(n, 20, 17, generator=g) > 0.2).float()
    return images, poses


# ------------------------------------------------------------------------------------ export
def test_agent_export_represents_with_the_teacher_and_predicts_with_the_student(tiny_run, agent,
                                                                               tmp_path):
    from launch import export
    from megatron_ego.inference import EgoAgent

    teacher, cfg = _training_teacher(tiny_run["checkpoint"])
    student = _training_student(tiny_run["checkpoint"], cfg)
    assert agent.metadata["weights"] == "teacher" and agent.metadata["step"] == "4"
    assert agent.metadata["predict_act_weights"] == "student"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 64, 64, generator=g)
    frames = torch.randn(2, 4, 3, 64, 64, generator=g)
    tokens = torch.randn(2, 4, 4, 5, 17, generator=g) * 0.3
    tokens[:, :, 3] = 1.0
    with torch.no_grad():
        want_feature, want_logits = teacher.represent(x)
        want_pred = {name: m.predict_head(m.act_and_predict(frames, tokens)[1])
                     for name, m in (("teacher", teacher), ("student", student))}
    assert not torch.allclose(want_pred["teacher"], want_pred["student"], atol=1e-4)
    feature, logits = agent.represent(x, with_logits=True)
    torch.testing.assert_close(feature, want_feature, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
    poses = tokens.permute(0, 1, 3, 4, 2).reshape(2, 20, 17, 4)  # [n, T*P, J, 4]
    torch.testing.assert_close(agent.predict(frames, poses), want_pred["student"], atol=1e-5,
                               rtol=0)
    # a teacher-only export runs the teacher for everything, and drops a stale student file
    out = tmp_path / "teacher_only"
    shutil.copytree(tiny_run["export"], out)
    assert (out / "student.safetensors").is_file()
    assert export.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out),
                        "--weights", "teacher"]) == 0
    assert not (out / "student.safetensors").exists()
    only = EgoAgent.from_pretrained(out, device="cpu")
    torch.testing.assert_close(only.predict(frames, poses), want_pred["teacher"], atol=1e-5,
                               rtol=0)
    # uint8 frames are prepared as the training loader prepares whole frames (load_frame)
    pixels = torch.randint(0, 256, (3, 96, 80, 3), generator=g, dtype=torch.uint8)
    prepared = torch.stack([load_frame(p.numpy(), "raw", 64) for p in pixels])
    with torch.no_grad():
        want_pixels = teacher.represent(prepared)[0]
    torch.testing.assert_close(agent.represent(pixels), want_pixels, atol=1e-5, rtol=0)
    torch.testing.assert_close(agent.represent(pixels.numpy()), want_pixels, atol=1e-5, rtol=0)


def test_student_export_equals_consolidated_zero_weights(tiny_run, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from launch import export
    from megatron_ego.inference import EgoAgent

    out = tmp_path / "student"
    assert export.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out),
                        "--weights", "student"]) == 0
    saved = load_file(out / "model.safetensors")
    ckpt = tiny_run["checkpoint"]
    zero = module_weights(get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name))
    assert saved.keys() == zero.keys() and len(saved) > 40
    for name, tensor in zero.items():
        assert torch.equal(saved[name], tensor.float()), name
    teacher = load_file(tiny_run["export"] / "model.safetensors")
    assert any(not torch.equal(teacher[k], saved[k]) for k in saved)  # EMA != student
    student = EgoAgent.from_pretrained(out, device="cpu")
    assert student.metadata["weights"] == "student"
    assert "zero_to_fp32" in student.metadata["source"]


def test_export_errors(tiny_run, tmp_path, capsys):
    from launch import export

    assert export.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    incomplete = tmp_path / "runs" / "checkpoints" / "step_0000009"
    incomplete.mkdir(parents=True)
    assert export.main(["--checkpoint", str(incomplete), "--out", str(tmp_path / "o")]) == 2
    assert "COMPLETE" in capsys.readouterr().err
    assert export.main(["--checkpoint", str(tmp_path / "runs"), "--out", str(tmp_path / "o")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_loading_rejects_a_config_of_another_shape(tiny_run, tmp_path):
    from megatron_ego.inference import EgoAgent

    cfg, weights, meta = read_export(tiny_run["export"])
    with pytest.raises(ExportError, match="does not exist"):
        EgoAgent.from_pretrained(tmp_path / "missing")
    # config.yaml swapped for another model's: caught against the header before building
    edited = tmp_path / "edited"
    shutil.copytree(tiny_run["export"], edited)
    text = (edited / "config.yaml").read_text().replace("hidden_size: 128", "hidden_size: 64")
    (edited / "config.yaml").write_text(text)
    with pytest.raises(ExportError, match="model.hidden_size"):
        EgoAgent.from_pretrained(edited)
    # weights written with a config of another shape: the mismatching tensor is named
    cfg.model.head_out_dim = 512
    write_export(weights, cfg, tmp_path / "other", meta)
    with pytest.raises(ExportError, match=r"prototypes has shape \(1024, 64\).*\(512, 64\)"):
        EgoAgent.from_pretrained(tmp_path / "other")


def test_transformer_engine_names_map_onto_the_local_spec():
    local = {"backbone.gpt.decoder.layers.0.input_layernorm.weight": torch.ones(2),
             "backbone.gpt.decoder.layers.0.pre_mlp_layernorm.weight": torch.zeros(2),
             "backbone.gpt.decoder.layers.0.self_attention.linear_qkv.weight": torch.ones(6, 2)}
    te = {"backbone.gpt.decoder.layers.0.self_attention.linear_qkv.layer_norm_weight": torch.ones(2),
          "backbone.gpt.decoder.layers.0.mlp.linear_fc1.layer_norm_weight": torch.zeros(2),
          "backbone.gpt.decoder.layers.0.self_attention.linear_qkv.weight": torch.ones(6, 2)}
    assert to_local_names(te).keys() == local.keys()
    assert to_module_names(local, te.keys()).keys() == te.keys()
    assert to_module_names(te, local.keys()).keys() == local.keys()
    assert torch.equal(to_module_names(local, te.keys())[
        "backbone.gpt.decoder.layers.0.mlp.linear_fc1.layer_norm_weight"], torch.zeros(2))


# --------------------------------------------------------------------------------- abilities
def test_act_rolls_out_its_own_predictions_and_never_reads_the_true_future(agent):
    images, poses = _clip_inputs(seed=2)
    future, visibility = agent.act(images, poses, return_visibility=True)
    assert future.shape == (2, 15, 17, 3) and future.dtype == torch.float32
    assert visibility.shape == (2, 15, 17) and torch.isfinite(future).all()
    changed = poses.clone()
    changed[:, 5:] = torch.randn(changed[:, 5:].shape) * 2.0  # other true future poses
    assert torch.equal(agent.act(images, changed), future)
    assert torch.equal(agent.act(images, poses[:, :5]), future)
    xyz, vis = poses[:, :5, :, :3], poses[:, :5, :, 3]
    assert torch.equal(agent.act(images, xyz, visibility=vis), future)
    observed = poses.clone()
    observed[:, :5, :, :3] += 0.3  # the observed poses are inputs: they change the output
    assert not torch.allclose(agent.act(images, observed), future)

    # step 1 comes from A_0 only; step 2 from A_0 and the fed-back prediction of A_1
    frames = agent.prepare_images(images, lead=2)  # [n, T, 3, S, S]
    tokens = torch.zeros(2, 4, 4, 5, 17)
    tokens[:, 0] = agent._tokens(agent.prepare_poses(poses[:, :5]))[:, 0]
    with torch.no_grad():
        step1 = agent.main.act_and_predict(frames, tokens)[0][:, 1]  # [n, 4, P, J]
    torch.testing.assert_close(future[:, :5], step1[:, :3].permute(0, 2, 3, 1), atol=1e-6, rtol=0)
    visible = (step1[:, 3].sigmoid() > 0.5).float()
    tokens[:, 1] = torch.cat([step1[:, :3] * visible[:, None], visible[:, None]], dim=1)
    with torch.no_grad():
        step2 = agent.main.act_and_predict(frames, tokens)[0][:, 2]
    torch.testing.assert_close(future[:, 5:10], step2[:, :3].permute(0, 2, 3, 1), atol=1e-6,
                               rtol=0)


def test_predict_depends_only_on_the_prefix(agent):
    images, poses = _clip_inputs(seed=3)
    full = agent.predict(images, poses)  # [n, T, K]
    assert full.shape == (2, 4, agent.cfg.model.head_out_dim)
    prefix = agent.predict(images[:, :2], poses[:, :10])
    torch.testing.assert_close(prefix, full[:, :2], atol=1e-6, rtol=0)
    state, logits = agent.predict(images, poses, with_state=True)
    assert state.shape == (2, 4, agent.cfg.model.hidden_size) and torch.equal(logits, full)


@pytest.mark.parametrize(("call", "message"), [
    (lambda a: a.represent(torch.zeros(2, 3, 32, 32)), r"\[\.\.\., 3, 64, 64\].*image_size=64"),
    (lambda a: a.represent(torch.zeros(2, 3, 64, 64) + 100), "unnormalised"),
    (lambda a: a.represent(np.zeros((2, 64, 64), dtype=np.uint8)), r"uint8 \[n, H, W, 3\]"),
    (lambda a: a.act(torch.zeros(2, 1, 64, 64, 3, dtype=torch.uint8), torch.zeros(2, 5, 17, 4)),
     "2 <= t <= model.num_steps=4"),
    (lambda a: a.act(torch.zeros(2, 4, 64, 64, 3, dtype=torch.uint8), torch.zeros(2, 5, 15, 4)),
     r"\[n, F, 17, 4\]"),
    (lambda a: a.act(torch.zeros(2, 4, 64, 64, 3, dtype=torch.uint8), torch.zeros(2, 7, 17, 4)),
     r"\[n=2, 5, 17, 4 or 3\]"),
    (lambda a: a.act(torch.zeros(2, 4, 64, 64, 3, dtype=torch.uint8), torch.zeros(2, 5, 17, 3)),
     "need visibility"),
    (lambda a: a.predict(torch.zeros(1, 2, 64, 64, 3, dtype=torch.uint8),
                         torch.ones(1, 10, 17, 4) * 150), "metres"),
    (lambda a: a.predict(torch.zeros(1, 2, 64, 64, 3, dtype=torch.uint8),
                         torch.zeros(1, 20, 17, 4)), r"need poses \[n=1, 10, 17, 4\]"),
])
def test_inputs_are_checked_with_the_expected_shape_in_the_message(agent, call, message):
    with pytest.raises(ValueError, match=message):
        call(agent)
