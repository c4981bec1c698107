"""The student's packed trunk call (model/packing.py) equals one trunk call per sequence."""

from __future__ import annotations

import pytest
import torch

from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.model.packing import Segments

from .batches import random_clip_batch


def _separate_calls(model: EgoAgent, batch: dict) -> dict[str, torch.Tensor]:
    """The student's outputs with the trunk called once per sequence (the pre-packing path)."""
    actions, future = model.act_and_predict(batch["frames"], batch["poses"])
    out = {"actions": actions, "future_state": future,
           "future_logits": model.predict_head(future[:, :-1])}
    for name in ("global", "local"):
        crops = batch[f"{name}_crops"]
        feature, logits = model.represent(crops.flatten(0, 1))
        out[f"{name}_logits"] = logits.unflatten(0, crops.shape[:2])
        if name == "global":
            out["global_features"] = feature.unflatten(0, crops.shape[:2])
    return out


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v * torch.linspace(-1, 1, v.shape[-1], dtype=v.dtype)).sum() for v in out.values())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_forward_and_gradients_equal_separate_calls(tiny_cfg, bidirectional):
    tiny_cfg.model.frame_bidirectional = bidirectional
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg.model).double()  # fp64: the two paths differ only in rounding
    for head in (model.action_head, model.initial_action_head):  # zero-initialised
        torch.nn.init.normal_(head.proj.weight, std=0.02)
    batch = random_clip_batch(tiny_cfg, 2)
    inputs = {k: batch[k].double() for k in ("frames", "poses", "global_crops", "local_crops")}
    packed = vars(model(**inputs))
    assert set(packed) == {"actions", "future_state", "future_logits", "global_logits",
                           "global_features", "local_logits"}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(_loss(packed), list(params.values()), allow_unused=True)
    separate = _separate_calls(model, inputs)
    want = torch.autograd.grad(_loss(separate), list(params.values()), allow_unused=True)
    for name, value in packed.items():
        torch.testing.assert_close(value, separate[name], rtol=1e-9, atol=1e-12, msg=name)
    checked = 0
    for name, got, ref in zip(params, grads, want):
        if ref is None:
            assert got is None, name
            continue
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12, msg=name)
        checked += 1
    assert checked > 20


def test_segments_pack_unpack_and_restart_positions():
    x1, x2 = torch.randn(2, 5, 4), torch.randn(3, 2, 4)
    segs = Segments.of([x1, x2], [None, None])
    packed = segs.pack([x1, x2])
    assert packed.shape == (16, 1, 4) and segs.sizes == [10, 6]
    y1, y2 = segs.unpack(packed)
    assert torch.equal(y1, x1) and torch.equal(y2, x2)
    cos, _ = segs.rope_tables(8, 10000.0, torch.float32, packed.device)
    assert cos.shape == (16, 1, 1, 8)
    assert torch.equal(cos[5], cos[0]) and torch.equal(cos[10], cos[0])  # every sample from 0
    assert torch.equal(cos[11], cos[1]) and not torch.equal(cos[1], cos[0])
