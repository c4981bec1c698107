"""Evaluation-time controls: does each ability use its inputs?

The paper's claim for predict is that the body's actions steer the predicted future state
(Sec. 4.4: EgoAgent "predicts the future states not only based on semantic similarity"); for
act, that the egocentric images improve motion over pose-only prediction. A control evaluates
the same model on the same queries with one input taken away or replaced, and the difference
from the real inputs, with a paired bootstrap interval over queries, says whether that input
matters:

- predict, ``shuffled`` actions: each clip gets the action tokens (poses) of another clip, a
  fixed derangement that pairs clips whose camera motion differs (``motion_derangement``);
- predict, ``zero`` actions: every pose all-invisible, (0, 0, 0, 0) per joint, the data's own
  encoding of "no pose" (docs/data_format.md);
- predict, ``next`` actions (an oracle): step t gets A_{t+1}, the poses after I_{t+1}, in place
  of A_t (the last step, never scored, gets zeros);
- act, ``shuffled_images``: each clip's frames are another clip's (the same derangement), its
  observed poses its own;
- act, ``no_images``: every frame one constant frame, the ImageNet mean colour (zeros after
  normalisation).

Deltas are ``real - control`` for retrieval (points of Top-1 or direction accuracy: positive
when the real input helps) and ``control - real`` for MPJPE (cm: positive when the real images
help). An input "matters" when the whole 95% interval lies above zero.

    order = motion_derangement(clip_signature(camera, image_step=5))   # [c]
    delta, low, high = paired_bootstrap(real_hits, control_hits)        # percent points
"""

from __future__ import annotations

import math

import numpy as np
import torch

from megatron_ego.eval.features import camera_table

ACTION_CONTROLS = ("shuffled", "zero", "next")
IMAGE_CONTROLS = ("shuffled_images", "no_images")
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def clip_signature(camera: np.ndarray) -> np.ndarray:
    """One number per clip for its camera motion: the rotation vector (axis x angle, radians) of
    the clip's whole turn R_0^T R_last, projected on the direction along which clips differ most
    (their first principal axis; mostly left / right turns).

    Args:
        camera: [c, F, 3, 4] each frame's [R | t] in the clip's first camera frame.
    Returns:
        [c] float64.
    """
    camera = np.asarray(camera, dtype=np.float64)
    if camera.ndim != 4 or camera.shape[2:] != (3, 4):
        raise ValueError(f"camera must be [c, F, 3, 4]; got {camera.shape}")
    turn = np.einsum("cji,cjk->cik", camera[:, 0, :, :3], camera[:, -1, :, :3])  # [c, 3, 3]
    axis = np.stack([turn[:, 2, 1] - turn[:, 1, 2], turn[:, 0, 2] - turn[:, 2, 0],
                     turn[:, 1, 0] - turn[:, 0, 1]], axis=1)  # [c, 3]: 2 sin(angle) x axis
    cosine = np.clip((np.trace(turn, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cosine)  # [c]
    norm = np.linalg.norm(axis, axis=1)
    vector = axis * np.where(norm > 1e-12, angle / np.maximum(norm, 1e-12), 0.0)[:, None]  # [c, 3]
    if len(vector) < 2:
        return vector[:, 0] if len(vector) else np.zeros(0)
    centred = vector - vector.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    principal = directions[0] * np.sign(directions[0][np.argmax(np.abs(directions[0]))])
    return centred @ principal


def motion_derangement(signature: np.ndarray) -> np.ndarray:
    """A fixed permutation that never maps a clip to itself and pairs clips whose motion differs.

    Clips are ranked by ``signature`` (ties by index) and clip at rank r receives the inputs of
    the clip at rank (r + c // 2) mod c: a left turn gets a right turn's actions, a still clip a
    moving one's.

    Args:
        signature: [c] (``clip_signature``).
    Returns:
        partner [c] int64: clip i receives the inputs of clip partner[i]; partner[i] != i for c >= 2.
    """
    signature = np.asarray(signature, dtype=np.float64)
    count = len(signature)
    if count < 2:
        raise ValueError(f"a control needs at least 2 clips to exchange inputs; got {count}")
    order = np.argsort(signature, kind="stable")  # rank -> clip
    partner = np.empty(count, dtype=np.int64)
    partner[order] = order[(np.arange(count) + count // 2) % count]
    return partner


def control_partners(data_dir: str, clip_ids: np.ndarray, num_frames: int) -> np.ndarray:
    """Each evaluated clip's partner (a clip id of ``clip_ids``), by camera motion.

    Args:
        data_dir: a preprocessed Ego-Exo4D split (its ``camera`` file).
        clip_ids: [c] the evaluated clips, in evaluation order.
        num_frames: 30 fps frames per clip (T x poses_per_step).
    """
    signature = clip_signature(camera_table(data_dir, num_frames)[clip_ids])
    return np.asarray(clip_ids)[motion_derangement(signature)]


def control_poses(poses: torch.Tensor, control: str, poses_per_step: int,
                  partner_poses: torch.Tensor | None = None) -> torch.Tensor:
    """The poses a predict control feeds in place of a clip's own.

    Args:
        poses: [n, T*P, J, 4] the clips' own poses (x, y, z metres, visibility).
        control: "shuffled" (``partner_poses``), "zero" or "next".
        partner_poses: [n, T*P, J, 4] the partners' poses, for "shuffled".
    Returns:
        [n, T*P, J, 4].
    """
    if control == "shuffled":
        if partner_poses is None or partner_poses.shape != poses.shape:
            raise ValueError("the shuffled control needs the partner clips' poses, shaped as the "
                             "clips' own")
        return partner_poses
    if control == "zero":
        return torch.zeros_like(poses)
    if control == "next":  # A_{t+1} in the place of A_t; the last step has none
        return torch.cat([poses[:, poses_per_step:], torch.zeros_like(poses[:, :poses_per_step])],
                         dim=1)
    raise ValueError(f"unknown action control {control!r}; expected one of {ACTION_CONTROLS}")


def paired_bootstrap(real: torch.Tensor, control: torch.Tensor, keep: torch.Tensor | None = None,
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                     scale: float = 100.0) -> tuple[float, float, float]:
    """Mean of ``real - control`` over the kept items, with a paired percentile bootstrap 95%
    interval (items resampled with replacement, the same draw for both).

    Args:
        real, control: [q] per-item values (bool hits, or per-sample errors).
        keep: [q] bool, the items to compare (NaN items are dropped too).
        scale: multiplies the result (100: hits -> percentage points).
    Returns:
        (delta, low, high); NaNs when no item is kept.
    """
    diff = (real.double() - control.double()).cpu()  # [q]
    mask = torch.isfinite(diff) if keep is None else keep.cpu().bool() & torch.isfinite(diff)
    diff = diff[mask]
    if not diff.numel():
        return math.nan, math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(diff), (samples, len(diff)), generator=generator)  # [B, q]
    means = diff[draws].mean(dim=1)  # [B]
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return scale * diff.mean().item(), scale * low, scale * high


def delta_metrics(name: str, delta: tuple[float, float, float]) -> dict[str, float]:
    """{delta_<name>, delta_<name>_ci_low, delta_<name>_ci_high}."""
    value, low, high = delta
    return {f"delta_{name}": value, f"delta_{name}_ci_low": low, f"delta_{name}_ci_high": high}


def matters(low: float | None) -> bool:
    """An input matters when the 95% interval of its delta lies above zero."""
    return low is not None and math.isfinite(low) and low > 0
