"""Action loss: L1 on x, y, z of visible joints plus visibility binary cross-entropy; optionally
the squared error (cm^2) for the motion steps t >= 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_ego.pose_format import VISIBLE


class ActionLoss(nn.Module):
    """pred, target [..., 4, P, J] (channels x, y, z in metres, visibility) -> (loss, terms).

    L1 is the mean absolute error over the x, y, z of joints visible in the target; the
    prediction's 4th channel is a logit trained with BCE against the target's visibility (0/1).
    With `motion_loss="mse"` and inputs [b, T, 4, P, J], the steps t >= 1 use the mean squared
    error in cm^2 instead (step 0 keeps L1 in metres), and the two position terms are added:
    `act_l1` reports step 0's and `act_motion` the motion steps'.
    """

    def __init__(self, visibility_weight: float = 1.0, motion_loss: str = "l1"):
        super().__init__()
        if motion_loss not in ("l1", "mse"):
            raise ValueError(f"motion_loss={motion_loss!r}: expected 'l1' or 'mse'")
        self.visibility_weight = visibility_weight
        self.motion_loss = motion_loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if pred.shape != target.shape or pred.shape[-3] != 4:
            raise ValueError(
                f"action prediction {tuple(pred.shape)} and target {tuple(target.shape)} must "
                "match and have 4 channels (x, y, z, visibility) at dim -3"
            )
        pred, target = pred.float(), target.float()
        bce = F.binary_cross_entropy_with_logits(pred[..., 3, :, :], target[..., 3, :, :])
        terms = {"act_visibility": bce.detach()}
        if self.motion_loss == "mse":
            if pred.dim() != 5 or pred.shape[1] < 2:
                raise ValueError("motion_loss='mse' needs [b, T >= 2, 4, P, J] actions")
            l1 = _position_error(pred[:, :1], target[:, :1], squared=False)
            motion = _position_error(pred[:, 1:], target[:, 1:], squared=True) * 1e4  # cm^2
            terms.update(act_l1=l1.detach(), act_motion=motion.detach())
            position = l1 + motion
        else:
            position = _position_error(pred, target, squared=False)
            terms["act_l1"] = position.detach()
        return position + self.visibility_weight * bce, terms


def _position_error(pred: torch.Tensor, target: torch.Tensor, squared: bool) -> torch.Tensor:
    """Mean |error| (or error^2) over the x, y, z of the joints visible in the target."""
    visible = target[..., 3, :, :] > VISIBLE  # [..., P, J]
    diff = pred[..., :3, :, :] - target[..., :3, :, :]  # [..., 3, P, J]
    err = (diff.square() if squared else diff.abs()).sum(-3)  # [..., P, J], sum over x, y, z
    return (err * visible).sum() / (visible.sum().clamp(min=1) * 3)
