"""Input projectors and learnable query tokens (paper Table 8)."""

from __future__ import annotations

import torch
from torch import nn

from megatron_ego.pose_format import VISIBLE


class ImageProjector(nn.Module):
    """Conv2d 3 -> h, kernel = stride = patch: [n, 3, H, W] -> [n, (H/p)(W/p), h] patch tokens."""

    def __init__(self, hidden_size: int, patch_size: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [n, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}"
            )
        x = self.proj(images)  # [n, h, H/p, W/p]
        return x.flatten(2).transpose(1, 2)  # [n, N, h], row-major patches


class ActionProjector(nn.Module):
    """Pose tensor [n, 4, 5, 17] -> Conv2d kernel (5, 17) -> LayerNorm -> GELU -> one token [n, h].

    The paper's conv reads the 4 pose channels. With `velocity_inputs` (ours) it also reads each
    pose's velocity (m/s at the 30 fps pose rate, from the pose before it in the same step; 0
    for the first pose and where either pose is invisible), i.e. 7 input channels. Positions are
    metres from the camera (~0.5 m) and a frame's motion is ~1 cm, so after the LayerNorm the
    motion the next action depends on would be a 1% ripple on the posture; in m/s it is on the
    posture's scale from the first step.
    """

    def __init__(self, hidden_size: int, pose_channels: int = 4, poses: int = 5, joints: int = 17,
                 pose_rate: float = 30.0, velocity_inputs: bool = False):
        super().__init__()
        self.expected = (pose_channels, poses, joints)
        self.pose_rate = pose_rate
        self.velocity_inputs = velocity_inputs
        in_channels = pose_channels + (3 if velocity_inputs else 0)
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=(poses, joints))
        self.norm = nn.LayerNorm(hidden_size)
        self.act = nn.GELU()

    def velocity(self, poses: torch.Tensor) -> torch.Tensor:
        """[n, 4, P, J] (x, y, z, visibility) -> [n, 3, P, J] m/s, 0 without a visible pair."""
        xyz, visible = poses[:, :3], poses[:, 3:4] > VISIBLE  # [n, 3, P, J], [n, 1, P, J]
        step = (xyz[:, :, 1:] - xyz[:, :, :-1]) * self.pose_rate  # [n, 3, P-1, J]
        step = step * (visible[:, :, 1:] & visible[:, :, :-1])
        return torch.cat([torch.zeros_like(step[:, :, :1]), step], dim=2)  # [n, 3, P, J]

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        if poses.dim() != 4 or tuple(poses.shape[1:]) != self.expected:
            raise ValueError(
                f"poses must be [n, {', '.join(map(str, self.expected))}] "
                f"(x,y,z,visibility; poses; joints), got {tuple(poses.shape)}"
            )
        if self.velocity_inputs:
            poses = torch.cat([poses, self.velocity(poses)], dim=1)  # [n, 7, P, J]
        x = self.proj(poses).flatten(1)  # [n, h]
        return self.act(self.norm(x))  # [n, h]


class QueryTokens(nn.Module):
    """Learnable queries: action (predicts A_t), future state (predicts I_{t+1}), state (feature)."""

    def __init__(self, hidden_size: int, std: float = 0.02):
        super().__init__()
        self.action = nn.Parameter(torch.randn(hidden_size) * std)  # [h]
        self.future_state = nn.Parameter(torch.randn(hidden_size) * std)  # [h]
        self.state = nn.Parameter(torch.randn(hidden_size) * std)  # [h]
