"""Trainer building blocks that need no process group: schedules, DeepSpeed JSON checks,
optimizer groups, checkpoint discovery, FLOP counts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from megatron_ego.config import ConfigError, load_config
from megatron_ego.model.summary import build_on_meta
from megatron_ego.training.checkpoint import (
    find_resume_checkpoint,
    mark_complete,
    prune,
    tag_for,
)
from megatron_ego.training.ds_config import load_ds_config
from megatron_ego.training.ema import EMA
from megatron_ego.training.flops import clip_flops, trunk_forward_flops
from megatron_ego.training.optimizer import apply_schedules, param_groups
from megatron_ego.training.schedules import build_schedules, cosine_schedule


def test_cosine_schedule_warmup_then_cosine_to_the_end_value():
    s = cosine_schedule(6e-4, 6e-6, iters=100, warmup_iters=10)
    assert len(s) == 100
    assert s[0] == 0.0 and s[5] == pytest.approx(3e-4)
    assert s[10] == pytest.approx(6e-4) and s[-1] == pytest.approx(6e-6)
    assert np.all(np.diff(s[10:]) <= 0)


def test_run_schedules_follow_the_paper_recipe():
    cfg = load_config("configs/egoagent_300m.yaml")
    s = build_schedules(cfg)
    assert s.lr.max() == pytest.approx(6e-4) and s.lr[-1] == pytest.approx(6e-6)
    assert int(np.argmax(s.lr)) == 1800
    assert s.weight_decay[0] == pytest.approx(0.04) and s.weight_decay[-1] == pytest.approx(0.4)
    assert s.ema_momentum[0] == pytest.approx(0.996) and s.ema_momentum[-1] == pytest.approx(1.0)
    assert np.all(s.teacher_temp == pytest.approx(0.04))
    warm = build_schedules(load_config("configs/tiny_cpu.yaml", [
        "--loss.warmup_teacher_temp=0.02", "--loss.warmup_teacher_temp_iters=10"]))
    assert warm.teacher_temp[0] == pytest.approx(0.02) and warm.teacher_temp[10] == 0.04


def _write(tmp_path, **overrides):
    with open("configs/zero2.json") as f:
        ds = json.load(f)
    ds.update(overrides)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return str(path)


def test_zero2_json_auto_values_are_filled_from_the_yaml(tmp_path):
    cfg = load_config("configs/tiny_cpu.yaml")  # micro 8, global 16, fp32
    ds = load_ds_config("configs/zero2.json", cfg, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 2
    # the shipped 300M config: 20 clips per GPU, 1,920 per step -> 3 micro-batches on 32 GPUs
    assert load_ds_config("configs/zero2.json", load_config("configs/egoagent_300m.yaml"),
                          32)["gradient_accumulation_steps"] == 3


@pytest.mark.parametrize("override, needle", [
    ({"train_batch_size": 32}, "train_batch_size=32 disagrees with run.global_batch_size=16"),
    ({"train_micro_batch_size_per_gpu": 4}, "run.micro_batch_size=8"),
    ({"bf16": {"enabled": True}}, "run.precision='fp32'"),
    ({"gradient_clipping": 0.5}, "optim.grad_clip"),
    ({"optimizer": {"type": "Adam"}}, "must not define 'optimizer'"),
])
def test_zero2_json_disagreements_are_one_line_errors(tmp_path, override, needle):
    with pytest.raises(ConfigError) as e:
        load_ds_config(_write(tmp_path, **override), load_config("configs/tiny_cpu.yaml"), 2)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_world_size_must_divide_the_global_batch():
    with pytest.raises(ConfigError, match="not a multiple"):
        load_ds_config("configs/zero2.json", load_config("configs/tiny_cpu.yaml"), world_size=3)


def test_param_groups_and_prototype_freezing(tiny_model):
    groups = param_groups(tiny_model)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay", "prototypes"}
    assert len(by_name["prototypes"]["params"]) == 2  # represent + predict heads
    assert all(p.ndim < 2 for p in by_name["no_decay"]["params"])
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(groups)
    apply_schedules(opt, lr=1e-3, weight_decay=0.1, freeze_prototypes=True)
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs == {"decay": (1e-3, 0.1), "no_decay": (1e-3, 0.0), "prototypes": (0.0, 0.1)}


def test_ema_update_is_the_dino_formula(tiny_cfg, tiny_model):
    from megatron_ego.training.ema import make_teacher

    teacher = make_teacher(tiny_model, tiny_cfg.model)
    before = teacher.action_head.proj.weight.clone()
    with torch.no_grad():
        tiny_model.action_head.proj.weight.add_(1.0)
    EMA(teacher, tiny_model).update(0.9)
    expected = 0.9 * before + 0.1 * tiny_model.action_head.proj.weight
    torch.testing.assert_close(teacher.action_head.proj.weight, expected)


def test_incomplete_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step, complete in ((10, True), (20, True), (30, False)):
        (root / tag_for(step)).mkdir(parents=True)
        (root / tag_for(step) / "trainer_state.pt").write_bytes(b"x" * step)
        if complete:
            mark_complete(root / tag_for(step), {"step": step})
    with caplog.at_level(logging.WARNING):
        found, _ = find_resume_checkpoint(str(tmp_path))
    assert found.name == tag_for(20)
    assert "incomplete checkpoint" in caplog.text and tag_for(30) in caplog.text
    prune(root, keep_last=1, newest=root / tag_for(30))
    assert sorted(p.name for p in root.iterdir()) == [tag_for(20), tag_for(30)]


def test_flop_count_matches_the_documented_formula():
    cfg = load_config("configs/egoagent_300m.yaml")
    h, f, s = 1024, 2816, 197
    assert trunk_forward_flops(cfg, s) == 22 * (2 * (4 * h * h + 3 * h * f) * s + 4 * s * s * h)
    model = build_on_meta(cfg)
    per_clip = clip_flops(cfg, model)
    assert per_clip["train"] == 3 * per_clip["student_forward"] + per_clip["teacher_forward"]
    # docs/paper_facts.md: 3.31 TFLOP per Ego-Exo4D clip for the 300M model.
    assert 1.5e12 < per_clip["train"] < 3.5e12
    assert clip_flops(cfg, model, with_poses=False)["train"] < per_clip["train"]


def test_flop_count_reads_the_built_action_modules():
    """The 7-channel projector and the extra step-0 head of the tiny config's switches show in
    the count: 3 more channels x P x J x h per step token, nothing else changes."""
    paper = load_config("configs/egoagent_300m.yaml")
    ours = load_config("configs/egoagent_300m.yaml", ["--model.action_velocity_inputs=true",
                                                      "--model.action_head=anchored"])
    a, b = clip_flops(paper, build_on_meta(paper)), clip_flops(ours, build_on_meta(ours))
    t, p, j, h = 4, 5, 17, 1024
    assert b["student_forward"] - a["student_forward"] == t * 2 * 3 * p * j * h


def test_init_from_copies_the_loaded_represent_head_into_the_predict_head(tiny_cfg):
    """model.predict_head_init=represent (the tiny config): after run.init_from the prediction
    head starts as the loaded representation head, not the random one the model was built with."""
    from megatron_ego.model.egoagent import EgoAgent
    from megatron_ego.training.init_from import InitSource, load_shared

    assert tiny_cfg.model.predict_head_init == "represent"
    torch.manual_seed(0)
    source = EgoAgent(tiny_cfg.model).state_dict()
    torch.manual_seed(1)
    module = EgoAgent(tiny_cfg.model)
    init = InitSource("stage1", "a test", tiny_cfg.model, source, source)
    load_shared(module, source, init, "student")
    for name, value in module.predict_head.state_dict().items():
        assert torch.equal(value, source[f"represent_head.{name}"]), name
    tiny_cfg.model.predict_head_init = "random"
    torch.manual_seed(1)
    independent = EgoAgent(tiny_cfg.model)
    before = {k: v.clone() for k, v in independent.predict_head.state_dict().items()}
    load_shared(independent, source, init, "student")
    assert all(torch.equal(v, before[k]) for k, v in independent.predict_head.state_dict().items())
