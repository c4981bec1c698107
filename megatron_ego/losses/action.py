"""Action loss: L1 (or smooth L1) on x, y, z of visible joints plus visibility binary
cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ActionLoss(nn.Module):
    """pred, target [..., 4, P, J] (channels x, y, z in metres, visibility) -> (loss, terms).

    L1 is the mean absolute error over the x, y, z of joints visible in the target (with
    `position_loss="smooth_l1"`, the Huber loss with threshold `beta` metres: |e| - beta/2
    above it, e^2 / (2 beta) below); the prediction's 4th channel is a logit trained with BCE
    against the target's visibility (0/1). The position term is reported as `act_l1` either way.
    """

    def __init__(self, visibility_weight: float = 1.0, position_loss: str = "l1",
                 beta: float = 0.05):
        super().__init__()
        if position_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"position_loss={position_loss!r}: expected 'l1' or 'smooth_l1'")
        if beta <= 0:
            raise ValueError(f"smooth L1 beta must be > 0 metres; got {beta}")
        self.visibility_weight = visibility_weight
        self.position_loss, self.beta = position_loss, beta

    def forward(self, pred: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if pred.shape != target.shape or pred.shape[-3] != 4:
            raise ValueError(
                f"action prediction {tuple(pred.shape)} and target {tuple(target.shape)} must "
                "match and have 4 channels (x, y, z, visibility) at dim -3"
            )
        pred, target = pred.float(), target.float()
        visible = target[..., 3, :, :] > 0.5  # [..., P, J]
        diff = pred[..., :3, :, :] - target[..., :3, :, :]  # [..., 3, P, J]
        if self.position_loss == "l1":
            err = diff.abs().sum(-3)  # [..., P, J], sum over x, y, z
        else:
            err = F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none",
                                   beta=self.beta).sum(-3)  # [..., P, J]
        num = visible.sum().clamp(min=1) * 3
        l1 = (err * visible).sum() / num
        bce = F.binary_cross_entropy_with_logits(pred[..., 3, :, :], target[..., 3, :, :])
        loss = l1 + self.visibility_weight * bce
        return loss, {"act_l1": l1.detach(), "act_visibility": bce.detach()}
