"""Act: MPJPE (cm) and MPJVE (cm/s) of predicted 3D body poses (paper Sec. 4.3, Table 3).

Errors are Euclidean distances in the egocentric camera frame, over the joints visible in the
TRUE pose (prediction visibility is ignored). Two averages, both reported:

- ``mpjpe_30fps`` etc.: each sample first averages over its own visible joints and frames, then
  samples are averaged (as Ego-Exo4D's body-pose baseline, ``bodypose/test.py``; docs/paper_facts.md,
  "Evaluation conventions");
- ``mpjpe_30fps_pooled`` etc.: one sum over every visible joint of the whole split divided by
  their count (as Ego-Exo4D's challenge script, ``bodypose/evaluation/evaluate.py``).

Frames. The predicted window follows the last observed pose (clip frame 4 of 20): window index k
is clip frame 5 + k. 10 fps continues the observed 10 fps grid (..., 1, 4): clip frames 7, 10,
13, 16, 19, i.e. window indices 2, 5, 8, 11, 14 (``low_fps_offset`` defaults to stride - 1).

Velocity (documented choice): a finite difference between consecutive evaluated frames INSIDE the
predicted window, times the frame rate: at 30 fps the 15 predicted poses give 14 velocities, at
10 fps the 5 poses give 4. The jump from the last observed pose to the first predicted one is not
scored, so every method is judged on its own outputs only. A velocity term counts only where the
joint is visible at both endpoints, as in the official script.
MPJPE at 10 fps is the MPJPE over the subsampled frames.

A sample with no visible joint in the whole window is skipped and counted (``num_skipped``); a
sample that has visible joints but no valid term for one metric (e.g. no joint visible at two
consecutive frames) is left out of that metric's mean only. A metric with no valid term in any
sample is NaN.

Usage::

    m = motion_metrics(pred_poses, true_poses, visible)   # [n, 15, 17, 3] metres, [n, 15, 17] bool
    m["mpjpe_30fps"], m["mpjve_10fps"], m["mpjpe_30fps_pooled"], m["num_samples"]
"""

from __future__ import annotations

import torch

METRES_TO_CM = 100.0
POSE_FPS = 30.0


def _check(pred: torch.Tensor, true: torch.Tensor, visible: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"poses must be [n, F, J, 3] metres; got pred {tuple(pred.shape)}")
    if true.shape != pred.shape:
        raise ValueError(
            f"predicted and true poses differ in shape: {tuple(pred.shape)} vs {tuple(true.shape)}"
        )
    if visible.shape != pred.shape[:3]:
        raise ValueError(
            f"visibility must be [n, F, J] = {list(pred.shape[:3])}; got {tuple(visible.shape)}"
        )


def _error_sums(
    pred: torch.Tensor, true: torch.Tensor, visible: torch.Tensor, fps: float
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample sums and counts of position (cm) and velocity (cm/s) errors.

    pred, true: [n, F, J, 3] metres at ``fps``; visible: [n, F, J] bool.
    Returns ((pos_sum [n], pos_count [n]), (vel_sum [n], vel_count [n])).
    """
    position = (pred - true).norm(dim=-1) * METRES_TO_CM  # [n, F, J]
    pos_sum = (position * visible).sum(dim=(1, 2))  # [n]
    pos_count = visible.sum(dim=(1, 2))  # [n]
    velocity_pred = (pred[:, 1:] - pred[:, :-1]) * fps  # [n, F-1, J, 3]
    velocity_true = (true[:, 1:] - true[:, :-1]) * fps  # [n, F-1, J, 3]
    both = visible[:, 1:] & visible[:, :-1]  # [n, F-1, J]
    velocity = (velocity_pred - velocity_true).norm(dim=-1) * METRES_TO_CM  # [n, F-1, J]
    vel_sum = (velocity * both).sum(dim=(1, 2))  # [n]
    vel_count = both.sum(dim=(1, 2))  # [n]
    return (pos_sum, pos_count), (vel_sum, vel_count)


def _reduce(total: torch.Tensor, count: torch.Tensor, keep: torch.Tensor, reduction: str) -> float:
    """Average sums [n] over counts [n] for the samples in ``keep`` [n] bool."""
    has = keep & (count > 0)
    if not has.any():
        return float("nan")
    if reduction == "pooled":
        return (total[has].sum() / count[has].sum()).item()
    return (total[has] / count[has]).mean().item()


@torch.no_grad()
def motion_metrics(
    pred_poses: torch.Tensor,
    true_poses: torch.Tensor,
    visible: torch.Tensor,
    low_fps_stride: int = 3,
    low_fps_offset: int | None = None,
) -> dict[str, float]:
    """MPJPE / MPJVE at 30 fps and 10 fps over the visible joints of the predicted window.

    Args:
        pred_poses: [n, F, J, 3] predicted joint positions, metres, 30 fps.
        true_poses: [n, F, J, 3] true joint positions, metres; values at invisible joints ignored.
        visible: [n, F, J] bool, True where the true joint is annotated.
        low_fps_stride: 30 fps poses per 10 fps pose (3).
        low_fps_offset: first window index kept at 10 fps; None = stride - 1 (clip frame 7
            when the last observed pose is clip frame 4).
    Returns:
        {"mpjpe_30fps": cm, "mpjve_30fps": cm/s, "mpjpe_10fps": cm, "mpjve_10fps": cm/s}
        averaged per sample then over samples, the same four with the suffix "_pooled"
        averaged over every visible joint, "num_samples": samples scored, "num_skipped":
        samples with no visible joint.
    """
    pred = torch.as_tensor(pred_poses, dtype=torch.float64)
    true = torch.as_tensor(true_poses, dtype=torch.float64, device=pred.device)
    vis = torch.as_tensor(visible, device=pred.device).bool()
    _check(pred, true, vis)
    if low_fps_offset is None:
        low_fps_offset = low_fps_stride - 1
    if low_fps_stride < 1 or not 0 <= low_fps_offset < max(1, pred.shape[1]):
        raise ValueError(
            f"need low_fps_stride >= 1 and 0 <= low_fps_offset < F={pred.shape[1]}; got "
            f"{low_fps_stride}, {low_fps_offset}"
        )
    # invisible joints may hold anything (NaN, huge values): make them inert before any arithmetic
    pred = torch.where(vis.unsqueeze(-1), pred, torch.zeros_like(pred))
    true = torch.where(vis.unsqueeze(-1), true, torch.zeros_like(true))

    scored = vis.flatten(1).any(dim=1)  # [n]
    metrics: dict[str, float] = {}
    rates = {"30fps": (slice(None), POSE_FPS),
             "10fps": (slice(low_fps_offset, None, low_fps_stride), POSE_FPS / low_fps_stride)}
    for name, (frames, fps) in rates.items():
        (pos_sum, pos_count), (vel_sum, vel_count) = _error_sums(
            pred[:, frames], true[:, frames], vis[:, frames], fps
        )
        for suffix, reduction in (("", "per_sample"), ("_pooled", "pooled")):
            metrics[f"mpjpe_{name}{suffix}"] = _reduce(pos_sum, pos_count, scored, reduction)
            metrics[f"mpjve_{name}{suffix}"] = _reduce(vel_sum, vel_count, scored, reduction)
    metrics["num_samples"] = int(scored.sum())
    metrics["num_skipped"] = int((~scored).sum())
    return metrics


@torch.no_grad()
def per_sample_mpjpe(pred_poses: torch.Tensor, true_poses: torch.Tensor, visible: torch.Tensor
                     ) -> torch.Tensor:
    """MPJPE (cm) at 30 fps of each sample over its visible joints, NaN for a sample with none:
    [n, F, J, 3], [n, F, J, 3], [n, F, J] -> [n] float64 (their mean over the finite ones is
    ``motion_metrics``' mpjpe_30fps)."""
    pred = torch.as_tensor(pred_poses, dtype=torch.float64)
    true = torch.as_tensor(true_poses, dtype=torch.float64, device=pred.device)
    vis = torch.as_tensor(visible, device=pred.device).bool()
    _check(pred, true, vis)
    pred = torch.where(vis.unsqueeze(-1), pred, torch.zeros_like(pred))
    true = torch.where(vis.unsqueeze(-1), true, torch.zeros_like(true))
    (pos_sum, pos_count), _ = _error_sums(pred, true, vis, POSE_FPS)
    return torch.where(pos_count > 0, pos_sum / pos_count.clamp(min=1), torch.nan)  # [n]
