"""Act baselines: zero-velocity and constant-velocity extrapolation of the observed poses.

Both see exactly what EgoAgent sees of the motion (the first 5 poses of the 20-frame window, with
their visibility channel) and predict the remaining 15 poses at 30 fps, in metres.

- zero velocity: every joint stays at its last observed position;
- constant velocity: every joint keeps moving with its last observed velocity
  p[4] - p[3] (per 30 fps frame), so the h-th predicted pose (h = 1..15) is p[4] + h (p[4] - p[3]).

Fallbacks for missing joints (visibility <= 0.5): a joint not visible in BOTH of the last two
observed frames gets zero velocity from its last visible position; a joint never visible in the
5 observed frames is predicted at the camera origin (0, 0, 0) (no information; scored only if the
true joint is visible later).

Usage::

    pred = constant_velocity(observed)   # [n, 5, J, 4] -> [n, 15, J, 3]
"""

from __future__ import annotations

import torch

from megatron_ego.pose_format import VISIBLE


def _split(observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [n, P, J, 3] and visibility [n, P, J] bool of observed poses [n, P, J, 4]."""
    observed = torch.as_tensor(observed)
    if observed.ndim != 4 or observed.shape[-1] != 4 or observed.shape[1] < 2:
        raise ValueError(
            "observed poses must be [n, P>=2, J, 4] (x, y, z, visibility); got "
            f"{tuple(observed.shape)}"
        )
    return observed[..., :3], observed[..., 3] > VISIBLE


def last_visible_position(observed: torch.Tensor) -> torch.Tensor:
    """[n, J, 3] position of each joint at its last visible observed frame, 0 if never visible."""
    positions, visible = _split(observed)  # [n, P, J, 3], [n, P, J]
    frame = torch.arange(positions.shape[1], device=positions.device).view(1, -1, 1)  # [1, P, 1]
    last = torch.where(visible, frame, -1).amax(dim=1)  # [n, J]
    index = last.clamp(min=0).view(last.shape[0], 1, -1, 1).expand(-1, 1, -1, 3)  # [n, 1, J, 3]
    position = positions.gather(1, index).squeeze(1)  # [n, J, 3]
    return torch.where((last >= 0).unsqueeze(-1), position, torch.zeros_like(position))


def zero_velocity(observed: torch.Tensor, horizon: int = 15) -> torch.Tensor:
    """Repeat the last observed pose: [n, P, J, 4] -> [n, horizon, J, 3] metres."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1; got {horizon}")
    start = last_visible_position(observed)  # [n, J, 3]
    return start.unsqueeze(1).expand(-1, horizon, -1, -1).clone()  # [n, horizon, J, 3]


def constant_velocity(observed: torch.Tensor, horizon: int = 15) -> torch.Tensor:
    """Extrapolate the last observed velocity: [n, P, J, 4] -> [n, horizon, J, 3] metres."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1; got {horizon}")
    positions, visible = _split(observed)  # [n, P, J, 3], [n, P, J]
    start = last_visible_position(observed)  # [n, J, 3]
    moving = visible[:, -1] & visible[:, -2]  # [n, J]
    step = positions[:, -1] - positions[:, -2]  # [n, J, 3] metres per frame
    step = torch.where(moving.unsqueeze(-1), step, torch.zeros_like(step))
    ahead = torch.arange(1, horizon + 1, dtype=positions.dtype, device=positions.device)
    return start.unsqueeze(1) + ahead.view(1, -1, 1, 1) * step.unsqueeze(1)  # [n, horizon, J, 3]
