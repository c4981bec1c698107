"""Output heads: DINO heads (representation, state prediction) and the action head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """Linear-GELU 2048, Linear-GELU 2048, Linear 256, L2-normalise, weight-normalised Linear -> K.

    The last layer is DINO's weight-normalised linear with the gain fixed to 1 (norm_last_layer):
    logits = x_hat @ normalize(V)^T, so every prototype row has unit norm.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 out_dim: int = 65536):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))  # V [K, d]
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_dim] -> logits [..., K]."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)  # [..., d]
        return F.linear(z, F.normalize(self.prototypes, dim=-1))  # [..., K]


class ActionHead(nn.Module):
    """Linear h -> 4 x 5 x 17: (x, y, z, visibility logit) for 5 poses of 17 joints."""

    def __init__(self, hidden_size: int, pose_channels: int = 4, poses: int = 5, joints: int = 17):
        super().__init__()
        self.shape = (pose_channels, poses, joints)
        self.proj = nn.Linear(hidden_size, pose_channels * poses * joints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., h] -> [..., 4, 5, 17]."""
        return self.proj(x).unflatten(-1, self.shape)
