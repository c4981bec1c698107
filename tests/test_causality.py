"""No leak of the future: the token layout and masks, proven on the real model."""

from __future__ import annotations

import pytest
import torch

from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.model.layout import StudentLayout

from .batches import random_clip_batch


def test_layout_positions():
    lay = StudentLayout(num_steps=4, patches=196)
    assert lay.seq_len == 4 * 199 == 796
    assert lay.action_query_positions.tolist() == [196, 395, 594, 793]
    positions = torch.arange(lay.seq_len)
    assert positions[lay.action_query_slice].tolist() == [196, 395, 594, 793]
    assert positions[lay.future_query_slice].tolist() == lay.future_query_positions.tolist()
    assert lay.action_token_position(0) == 197 and lay.future_query_position(0) == 198
    mask = lay.attention_mask()[0, 0]
    assert mask.shape == (796, 796) and not mask[5, 3] and mask[3, 5]


def test_frame_bidirectional_opens_only_patch_blocks():
    lay = StudentLayout(num_steps=2, patches=4, frame_bidirectional=True)
    mask = lay.attention_mask()[0, 0]  # True = masked
    assert not mask[0, 3]  # patch 0 sees patch 3 of its own frame
    assert mask[4, 5]  # action query still causal
    assert mask[0, 7] and mask[3, 7]  # no patch sees the next frame
    assert not mask[7, 0]


def _randomize_action_head(model) -> None:
    """The action head starts at zero (zero-velocity start), which would hide what the action
    query sees; give it weights so that its outputs depend on its inputs."""
    with torch.no_grad():
        for head in (model.action_head, model.initial_action_head):
            torch.nn.init.normal_(head.proj.weight, std=0.02)


def _step_outputs(model, frames, poses):
    with torch.no_grad():
        actions, future = model.act_and_predict(frames, poses)
    return actions, future


@pytest.mark.parametrize(("bidirectional", "action_in_query"),
                         [(False, False), (True, False), (False, True)])
def test_changing_the_future_leaves_step_t_bit_identical(tiny_cfg, bidirectional, action_in_query):
    tiny_cfg.model.frame_bidirectional = bidirectional
    tiny_cfg.model.action_in_query = action_in_query
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg.model).eval()
    _randomize_action_head(model)
    batch = random_clip_batch(tiny_cfg, b=2, seed=1)
    frames, poses = batch["frames"], batch["poses"]
    actions, future = _step_outputs(model, frames, poses)
    T = tiny_cfg.model.num_steps
    g = torch.Generator().manual_seed(7)
    for t in range(T):
        # Action query of step t: blind to A_t, to I_{t+1} and to everything later.
        f2, p2 = frames.clone(), poses.clone()
        p2[:, t:] = torch.randn(p2[:, t:].shape, generator=g)
        f2[:, t + 1:] = torch.randn(f2[:, t + 1:].shape, generator=g)
        a2, fut2 = _step_outputs(model, f2, p2)
        assert torch.equal(a2[:, : t + 1], actions[:, : t + 1]), f"action of step {t} leaked"
        assert torch.equal(fut2[:, :t], future[:, :t])
        # Future-state query of step t: sees A_t by design, blind to I_{t+1}, A_{t+1} and later.
        f3, p3 = frames.clone(), poses.clone()
        f3[:, t + 1:] = torch.randn(f3[:, t + 1:].shape, generator=g)
        p3[:, t + 1:] = torch.randn(p3[:, t + 1:].shape, generator=g)
        _, fut3 = _step_outputs(model, f3, p3)
        assert torch.equal(fut3[:, : t + 1], future[:, : t + 1]), f"future of step {t} leaked"
        # ...while image t itself changes both outputs of step t.
        f4 = frames.clone()
        f4[:, t] = torch.randn(f4[:, t].shape, generator=g)
        a4, fut4 = _step_outputs(model, f4, poses)
        assert not torch.allclose(a4[:, t], actions[:, t])
        assert not torch.allclose(fut4[:, t], future[:, t])
        if t > 0:
            assert torch.equal(a4[:, :t], actions[:, :t])


@pytest.mark.parametrize("action_in_query", [False, True])
def test_action_t_reaches_the_future_state_of_step_t(tiny_cfg, action_in_query):
    tiny_cfg.model.action_in_query = action_in_query
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg.model).eval()
    batch = random_clip_batch(tiny_cfg, b=1, seed=2)
    _, future = _step_outputs(model, batch["frames"], batch["poses"])
    p2 = batch["poses"].clone()
    p2[:, 1] += 1.0
    _, fut2 = _step_outputs(model, batch["frames"], p2)
    assert torch.equal(fut2[:, 0], future[:, 0])
    assert not torch.allclose(fut2[:, 1], future[:, 1])


def test_action_in_query_puts_a_t_into_the_future_query_input(tiny_cfg):
    tiny_cfg.model.action_in_query = True
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg.model).eval()
    batch = random_clip_batch(tiny_cfg, b=2, seed=4)
    with torch.no_grad():
        seq = model._sequence_tokens(batch["frames"], batch["poses"])  # [b, S, h]
        acts = seq[:, [model.layout.action_token_position(t) for t in range(model.layout.num_steps)]]
        queries = seq[:, model.layout.future_query_slice]  # [b, T, h]
    assert torch.allclose(queries, model.queries.future_state + acts)


def test_batch_items_do_not_mix(tiny_cfg, tiny_model):
    _randomize_action_head(tiny_model)
    batch = random_clip_batch(tiny_cfg, b=2, seed=3)
    a, f = _step_outputs(tiny_model, batch["frames"], batch["poses"])
    f2 = batch["frames"].clone()
    f2[1] = 0.0
    a2, fut2 = _step_outputs(tiny_model, f2, batch["poses"])
    assert torch.equal(a2[0], a[0]) and torch.equal(fut2[0], f[0])
