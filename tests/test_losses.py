"""Losses: DINO against hand-computed values, centering momentum, action loss, gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_ego.config import load_config
from megatron_ego.losses.action import ActionLoss
from megatron_ego.losses.dino import DINOLoss
from megatron_ego.losses.objective import EgoAgentObjective
from megatron_ego.training.ema import make_teacher

from .batches import random_clip_batch


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_dino_loss_is_log_k_against_a_uniform_student():
    loss = DINOLoss(out_dim=3, student_temp=0.1)
    teacher = torch.tensor([[[2.0, -1.0, 0.5]]])  # [1 view, 1, 3]
    student = torch.zeros(1, 1, 3)
    value = loss(student, teacher, teacher_temp=0.04, skip_same_view=False)
    assert value.item() == pytest.approx(math.log(3), abs=1e-6)


def test_dino_loss_equals_hand_computed_cross_entropy():
    st, tt = 0.1, 0.04
    t = [[0.2, 0.1, -0.3], [0.0, 0.05, 0.02]]  # 2 teacher views, n = 1
    s = [[0.3, -0.2, 0.1], [0.0, 0.4, -0.1], [0.2, 0.2, 0.25]]  # 3 student views
    center = [(t[0][k] + t[1][k]) / 2 for k in range(3)]  # center_init="first_batch"
    expected, pairs = 0.0, 0
    for i, tv in enumerate(t):
        p = _softmax([(x - c) / tt for x, c in zip(tv, center)])
        for v, sv in enumerate(s):
            if v == i:
                continue
            q = _softmax([x / st for x in sv])
            expected += -sum(pk * math.log(qk) for pk, qk in zip(p, q))
            pairs += 1
    expected /= pairs
    loss = DINOLoss(out_dim=3, student_temp=st, center_init="first_batch")
    got = loss(torch.tensor(s)[:, None], torch.tensor(t)[:, None], teacher_temp=tt)
    assert pairs == 4
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_center_moves_by_the_stated_momentum_and_is_used():
    loss = DINOLoss(out_dim=2, student_temp=0.1, center_momentum=0.9, center_init="first_batch")
    t1 = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])  # batch mean [2, 4]
    loss(torch.zeros(1, 2, 2), t1, 0.04, skip_same_view=False)
    torch.testing.assert_close(loss.center, torch.tensor([[2.0, 4.0]]))  # first batch: its mean
    t2 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    loss(torch.zeros(1, 2, 2), t2, 0.04, skip_same_view=False)
    torch.testing.assert_close(loss.center, torch.tensor([[1.8, 3.6]]))  # 0.9 c + 0.1 mean
    loss(torch.zeros(1, 2, 2), t2, 0.04, skip_same_view=False)
    torch.testing.assert_close(loss.center, torch.tensor([[1.62, 3.24]]))
    # the center is subtracted from the teacher before the softmax:
    student = torch.tensor([[[0.0, 1.0]]])
    teacher = torch.tensor([[[1.62, 3.24]]])  # equal to the center -> uniform teacher target
    value = loss(student, teacher, 0.04, skip_same_view=False)
    q = _softmax([0.0, 10.0])
    assert value.item() == pytest.approx(-0.5 * (math.log(q[0]) + math.log(q[1])), rel=1e-5)
    assert {"center", "center_updates"} <= set(loss.state_dict())


def _fixed_logits(views: int, phase: float, n: int = 3, k: int = 5) -> torch.Tensor:
    """[views, n, k] deterministic logits: 0.5 sin(0.7 i + phase), i = 0, 1, ... row-major."""
    i = torch.arange(views * n * k, dtype=torch.float64).view(views, n, k)
    return (torch.sin(0.7 * i + phase) * 0.5).float()


def test_dino_loss_defaults_match_the_official_dino_over_two_batches():
    """Default settings = facebookresearch/dino's DINOLoss: center starts at 0, EMA (0.9) after
    each loss. The expected numbers were computed with a separate script that follows
    main_dino.py's DINOLoss line by line (float64, 4 student crops of which 2 are the teacher's
    global views, student temperature 0.1, teacher temperature 0.04)."""
    cfg = load_config("configs/egoagent_300m.yaml", ["--model.head_out_dim=5"])
    loss = EgoAgentObjective(cfg.model, cfg.loss).represent_loss  # the configured DINO loss
    expected = [
        (2.8286272973898647,
         [0.0074390729, 0.0054286301, 0.0008650178, -0.004105426, -0.0071450237]),
        (2.9762061455217896,
         [0.0115872896, 0.0050077244, -0.0039270518, -0.0110148742, -0.0129222292]),
    ]
    for (want_loss, want_center), phase in zip(expected, (0.3, 1.1)):
        got = loss(_fixed_logits(4, phase), _fixed_logits(2, phase + 2.0), teacher_temp=0.04)
        assert got.item() == pytest.approx(want_loss, abs=1e-5)
        torch.testing.assert_close(loss.center[0], torch.tensor(want_center), rtol=0, atol=1e-5)


def test_action_loss_ignores_invisible_joints():
    target = torch.zeros(1, 4, 5, 17)
    target[:, 3] = 1.0
    target[:, 3, :, 0] = 0.0  # joint 0 invisible in every pose
    pred = target.clone()
    pred[:, 3] = 20.0  # confident logits; BCE ~ 0 where visible
    pred[:, 3, :, 0] = -20.0
    pred[:, :3, :, 0] = 100.0  # a huge error on the invisible joint only
    pred[:, 0, :, 1:] += 0.3  # 0.3 m error on x of the visible joints
    loss, parts = ActionLoss(visibility_weight=1.0)(pred, target)
    assert parts["act_l1"].item() == pytest.approx(0.1, rel=1e-5)  # mean over x, y, z
    assert parts["act_visibility"].item() < 1e-6
    assert loss.item() == pytest.approx(0.1, rel=1e-4)


def test_motion_mse_squares_centimetres_after_step_0_and_keeps_l1_for_the_posture():
    target = torch.zeros(1, 3, 4, 5, 17)  # [b, T, 4, P, J]
    target[:, :, 3] = 1.0
    pred = target.clone()
    pred[:, :, 3] = 20.0
    pred[:, 0, 0] += 0.10  # step 0: 10 cm on x of every joint
    pred[:, 1:, 1, :, :8] += 0.02  # steps 1-2: 2 cm on y of joints 0-7
    pred[:, 1:, 2, :, 8:] -= 0.03  # steps 1-2: 3 cm on z of joints 8-16
    pred[:, 1, 3, :, 0] = -20.0  # visibility wrong once: only the BCE notices
    loss, parts = ActionLoss(1.0, "mse")(pred, target)
    assert parts["act_l1"].item() == pytest.approx(0.10 / 3, rel=1e-5)  # mean over x, y, z
    expected_motion = (8 * 2.0 ** 2 + 9 * 3.0 ** 2) / (17 * 3)  # cm^2, mean over joints, xyz
    assert parts["act_motion"].item() == pytest.approx(expected_motion, rel=1e-4)
    assert loss.item() == pytest.approx(
        parts["act_l1"].item() + expected_motion + parts["act_visibility"].item(), rel=1e-4)
    _, l1 = ActionLoss(1.0, "l1")(pred, target)
    assert "act_motion" not in l1
    with pytest.raises(ValueError, match="motion_loss"):
        ActionLoss(1.0, "huber")
    with pytest.raises(ValueError, match="T >= 2"):
        ActionLoss(1.0, "mse")(pred[:, 0], target[:, 0])


def test_total_loss_reaches_every_student_parameter_and_no_teacher(tiny_cfg, tiny_model):
    student = tiny_model.train()
    teacher = make_teacher(student, tiny_cfg.model)
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    batch = random_clip_batch(tiny_cfg, b=2)
    out = student(**objective.student_inputs(batch))
    targets = objective.teacher_targets(teacher, batch)
    total, terms = objective(out, targets, batch, teacher_temp=0.04)
    assert {"loss_represent", "loss_predict", "loss_act", "loss"} <= set(terms)
    total.backward()
    dead = [n for n, p in student.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    frozen = [n for n, p in student.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.gpt.embedding.word_embeddings.weight"]  # unused by design
    assert all(p.grad is None for p in teacher.parameters())


def test_walking_tours_batches_train_representation_only(tiny_cfg, tiny_model):
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    batch = random_clip_batch(tiny_cfg, b=2)
    wt = {"source": "walking_tours", "global_crops": batch["global_crops"],
          "local_crops": batch["local_crops"]}
    inputs = objective.student_inputs(wt)
    assert set(inputs) == {"global_crops", "local_crops"}
    out = tiny_model(**inputs)
    total, terms = objective(out, objective.teacher_targets(tiny_model, wt), wt, 0.04)
    assert set(terms) == {"loss_represent", "loss_koleo", "loss"}  # tiny_cpu.yaml: KoLeo on


def test_mixed_batch_trains_crops_of_all_samples_and_weighs_the_clips_by_their_share(
        tiny_cfg, tiny_model):
    """data.mix_mode=within_batch: 3 samples' crops (2 clips + 1 WalkingTours frame) in one
    representation pass, the 2 clips' sequence in another; predict and act weigh 2/3."""
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    clips, walk = random_clip_batch(tiny_cfg, b=2), random_clip_batch(tiny_cfg, b=1, seed=1)
    mixed = {**clips, "source": "mixed", "sequence_share": 2 / 3,
             **{k: torch.cat([clips[k], walk[k]]) for k in ("global_crops", "local_crops")}}
    inputs = objective.student_inputs(mixed)
    assert inputs["frames"].shape[0] == 2 and inputs["global_crops"].shape[0] == 3
    out = tiny_model(**inputs)
    assert out.global_logits.shape[0] == 3 and out.actions.shape[0] == 2
    total, terms = objective(out, objective.teacher_targets(tiny_model, mixed), mixed, 0.04)
    c = tiny_cfg.loss
    want = (c.represent_weight * terms["loss_represent"] + c.koleo_weight * terms["loss_koleo"]
            + 2 / 3 * (c.predict_weight * terms["loss_predict"] + c.act_weight * terms["loss_act"]
                       + c.predict_contrastive_weight * terms["loss_predict_contrastive"]
                       + c.predict_direction_weight * terms["loss_predict_direction"]))
    assert total.item() == pytest.approx(want.item(), rel=1e-5)


def test_koleo_grows_as_features_crowd_together():
    from megatron_ego.losses.objective import koleo

    spread = torch.eye(4, 8)  # orthonormal: nearest neighbour at distance sqrt(2)
    crowded = spread * 0.01 + torch.ones(4, 8)  # nearly one direction
    assert koleo(spread).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    assert koleo(crowded) > koleo(spread) + 3


def test_zero_weight_skips_the_term(tiny_cfg, tiny_model):
    tiny_cfg.loss.predict_weight = 0.0
    tiny_cfg.loss.predict_contrastive_weight = 0.0  # on in tiny_cpu.yaml; it needs the targets too
    tiny_cfg.loss.predict_direction_weight = 0.0  # likewise
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    batch = random_clip_batch(tiny_cfg, b=1)
    targets = objective.teacher_targets(tiny_model, batch)
    assert "next_frames" not in targets and "frames" not in targets
    _, terms = objective(tiny_model(**objective.student_inputs(batch)), targets, batch, 0.04)
    predict_terms = {"loss_predict", "loss_predict_contrastive", "loss_predict_direction"}
    assert not predict_terms & set(terms) and "loss_act" in terms


def test_sinkhorn_knopp_targets_are_distributions_sharing_the_prototypes():
    from megatron_ego.losses.dino import sinkhorn_knopp

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 16, generator=g) * 0.2 + torch.linspace(0, 0.2, 16)  # a biased head
    q = sinkhorn_knopp(logits, temp=0.04, iterations=30)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((16,), 64 / 16), rtol=0.01, atol=0.0)
    plain = torch.softmax(logits / 0.04, dim=1).sum(0)
    assert plain.max() / plain.min() > 10  # without it, the bias would take most of the mass


def test_sinkhorn_centering_in_the_loss_and_config(tiny_cfg):
    from megatron_ego.config import ConfigError, load_config

    loss = DINOLoss(out_dim=8, centering="sinkhorn_knopp")
    value = loss(torch.randn(3, 4, 8), torch.randn(2, 4, 8), teacher_temp=0.04)
    assert torch.isfinite(value) and value > 0
    assert load_config("configs/tiny_cpu.yaml",
                       ["--loss.centering=sinkhorn_knopp"]).loss.centering == "sinkhorn_knopp"
    with pytest.raises(ConfigError, match="loss.centering"):
        load_config("configs/tiny_cpu.yaml", ["--loss.centering=batch"])


def test_predict_infonce_equals_hand_computed_cross_entropy():
    from megatron_ego.losses.contrastive import predict_infonce

    predicted = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    targets = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosines: row 0 (1, 0), row 1 (.7071, .7071)
    want = (-math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(0.0)))
            - math.log(0.5)) / 2  # row 1: both columns tie -> log 2
    assert predict_infonce(predicted, targets, 0.5).item() == pytest.approx(want, rel=1e-6)
    # ranking the real next frame first lowers it; swapping the targets raises it
    assert predict_infonce(targets, targets, 0.1) < predict_infonce(targets.flip(0), targets, 0.1)
    with pytest.raises(ValueError, match=r"must both be \[n, K\]"):
        predict_infonce(predicted, targets[:1], 0.5)


def test_contrastive_term_trains_the_prediction_even_without_the_dino_term(tiny_cfg, tiny_model):
    tiny_cfg.loss.predict_weight = 0.0
    tiny_cfg.loss.predict_direction_weight = 0.0  # on in tiny_cpu.yaml: the contrastive term alone
    tiny_cfg.loss.predict_contrastive_weight = 2.0
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    batch = random_clip_batch(tiny_cfg, b=2)
    student = tiny_model.train()
    targets = objective.teacher_targets(make_teacher(student, tiny_cfg.model), batch)
    out = student(**objective.student_inputs(batch))
    total, terms = objective(out, targets, batch, 0.04)
    assert "loss_predict" not in terms and terms["loss_predict_contrastive"] > 0
    total.backward()
    assert student.predict_head.prototypes.grad.abs().sum() > 0
    tiny_cfg.loss.predict_contrastive_weight = 0.0
    off = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    assert "next_frames" not in off.teacher_targets(tiny_model, batch)


def test_direction_loss_picks_the_next_frame_among_the_clips_own_three():
    from megatron_ego.losses.contrastive import predict_direction_loss

    # one clip, T = 3: frames I_0, I_1, I_2 on three orthogonal axes
    frames = torch.eye(3)[None]  # [1, 3, K=3]
    # step 0 predicts I_1 (candidates I_1, I_0); step 1 predicts I_2 (candidates I_2, I_1, I_0)
    predicted = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # step 1 points at I_0
    tau = 0.5
    step0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    step1 = -math.log(math.exp(0) / (math.exp(0) + math.exp(0) + math.exp(2)))
    got = predict_direction_loss(predicted, frames, tau)
    assert got.item() == pytest.approx((step0 + step1) / 2, rel=1e-6)
    # pointing step 1 at I_2 instead lowers it
    better = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert predict_direction_loss(better, frames, tau) < got
    with pytest.raises(ValueError, match=r"must be \[b, T, K\]"):
        predict_direction_loss(predicted, frames[:, 1:], tau)


def test_direction_term_adds_frame_zero_to_the_teacher_and_trains_the_prediction(tiny_cfg,
                                                                                 tiny_model):
    tiny_cfg.loss.predict_direction_weight = 1.0
    objective = EgoAgentObjective(tiny_cfg.model, tiny_cfg.loss)
    batch = random_clip_batch(tiny_cfg, b=2)
    student = tiny_model.train()
    targets = objective.teacher_targets(make_teacher(student, tiny_cfg.model), batch)
    t = tiny_cfg.model.num_steps
    assert targets["frames"].shape[:2] == (2, t)
    torch.testing.assert_close(targets["next_frames"], targets["frames"][:, 1:])
    out = student(**objective.student_inputs(batch))
    total, terms = objective(out, targets, batch, 0.04)
    assert terms["loss_predict_direction"] > 0
    total.backward()
    assert student.predict_head.prototypes.grad.abs().sum() > 0
