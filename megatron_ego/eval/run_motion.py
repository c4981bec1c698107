"""Act benchmark: 3D body-motion prediction on preprocessed Ego-Exo4D val clips.

Per clip: the T = 4 images and the first P = 5 poses go in; the last (T-1) x P = 15 of the 20
poses come out (``agent.act``, an autoregressive rollout that feeds back its own predictions).
``observed_and_future`` splits a clip's poses so that the model call only ever receives the
observed part. Scored with MPJPE / MPJVE at 30 and 10 fps over the joints visible in the truth
(eval/motion.py), beside the zero-velocity and constant-velocity baselines (eval/baselines.py),
which see the same 5 observed poses. A clip whose stored poses hold a NaN or an inf, or a joint
beyond pose_format.MAX_ABS_METRES, or whose records fail their checks (features.usable_clips), is
left out before any model call, logged with its file and record, and counted (``num_bad_clips``,
also in ``num_skipped``).

    results = run_motion(agent, "data/egoexo4d/val", "runs/eval", ranks)
    results["egoagent"]["mpjpe_30fps"], results["constant_velocity"]["mpjpe_30fps"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from megatron_ego.eval.baselines import constant_velocity, zero_velocity
from megatron_ego.eval.controls import (
    IMAGE_CONTROLS,
    control_partners,
    delta_metrics,
    paired_bootstrap,
)
from megatron_ego.eval.features import (
    PairedClips,
    make_loader,
    open_val_clips,
    select_clips,
    usable_clips,
)
from megatron_ego.eval.motion import motion_metrics, per_sample_mpjpe
from megatron_ego.pose_format import VISIBLE
from megatron_ego.runtime.processes import Processes

log = logging.getLogger(__name__)


def observed_and_future(poses: torch.Tensor, observed: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """poses [n, F, J, 4] -> observed [n, P, J, 4], future xyz [n, F-P, J, 3] m, visible [n, F-P, J]."""
    future = poses[:, observed:]  # [n, F-P, J, 4]
    return poses[:, :observed], future[..., :3], future[..., 3] > VISIBLE


def rollout(agent, data_dir: str, clip_ids: np.ndarray, batch_size: int, workers: int,
            partner_ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Predictions and truths for ``clip_ids``: pred/true [n, 15, J, 3], visible [n, 15, J],
    observed [n, 5, J, 4], clip [n]; with ``partner_ids``, also the image controls of
    eval/controls.py: pred_shuffled_images (each clip's frames are its partner's) and
    pred_no_images (one constant frame, zeros after normalisation), [n, 15, J, 3] each."""
    P = agent.poses_per_step
    keys = ["pred", "true", "visible", "observed", "clip"]
    keys += [f"pred_{c}" for c in IMAGE_CONTROLS] if partner_ids is not None else []
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    partners = clip_ids if partner_ids is None else partner_ids
    dataset = PairedClips(data_dir, clip_ids, agent.image_size, partners,
                          partner_frames=partner_ids is not None)
    for frames, poses, partner_frames, _, clip in make_loader(dataset, batch_size, workers):
        observed, true, visible = observed_and_future(poses, P)
        parts["pred"].append(agent.act(frames, observed).cpu())  # [b, 15, J, 3]
        if partner_ids is not None:
            parts["pred_shuffled_images"].append(agent.act(partner_frames, observed).cpu())
            parts["pred_no_images"].append(agent.act(torch.zeros_like(frames), observed).cpu())
        for key, value in (("true", true), ("visible", visible), ("observed", observed),
                           ("clip", clip.long())):
            parts[key].append(value)
    if not parts["clip"]:
        T, J = agent.num_steps, agent.num_joints
        future = torch.zeros(0, (T - 1) * P, J, 3)
        empty = {"true": future, "visible": torch.zeros(0, (T - 1) * P, J, dtype=torch.bool),
                 "observed": torch.zeros(0, P, J, 4), "clip": torch.zeros(0, dtype=torch.int64)}
        return {k: empty.get(k, future) for k in keys}
    return {k: torch.cat(v) for k, v in parts.items()}


def _figures(outputs: dict[str, torch.Tensor], out_dir: Path, count: int) -> list[Path]:
    """Predicted vs true skeletons of ``count`` clips spread over the split (with visible joints)."""
    from megatron_ego.eval.figures import plot_skeleton_sequence

    candidates = torch.nonzero(outputs["visible"].flatten(1).any(dim=1)).flatten().numpy()
    if not count or not len(candidates):
        return []
    picks = candidates[np.unique(np.linspace(0, len(candidates) - 1, count).round().astype(int))]
    paths = []
    for i in picks:
        one = slice(int(i), int(i) + 1)
        true, visible = outputs["true"][one], outputs["visible"][one]
        ours = motion_metrics(outputs["pred"][one], true, visible)["mpjpe_30fps"]
        still = motion_metrics(zero_velocity(outputs["observed"][one], true.shape[1]), true,
                               visible)["mpjpe_30fps"]
        clip = int(outputs["clip"][i])
        paths.append(plot_skeleton_sequence(
            outputs["pred"][i].numpy(), true[0].numpy(), visible[0].numpy(),
            out_dir / "figures" / f"motion_clip{clip:06d}.png",
            title=f"val clip {clip}: MPJPE {ours:.1f} cm (EgoAgent) vs {still:.1f} cm "
                  f"(zero velocity), 30 fps"))
    return paths


def run_motion(agent, data_dir: str, out_dir: str | Path, ranks: Processes,
               batch_size: int = 64, workers: int = 4, max_clips: int | None = None,
               num_figures: int = 3, controls: bool = True) -> dict[str, dict[str, float]]:
    """MPJPE (cm) / MPJVE (cm/s) at 30 and 10 fps of EgoAgent and the two baselines; with
    ``controls``, also of EgoAgent with each image control of eval/controls.py and its MPJPE
    difference from the real images (paired bootstrap over samples)."""
    dataset = open_val_clips(data_dir, agent)
    clip_ids, skipped = usable_clips(dataset, select_clips(len(dataset), max_clips))
    if ranks.is_main:
        for why in skipped:
            log.warning("motion: skipped a val clip, %s", why)
    controls = controls and len(clip_ids) >= 2
    T, P = agent.num_steps, int(dataset.manifest["poses_per_step"])
    partner_ids = control_partners(data_dir, clip_ids, T * P) if controls else None
    mine = ranks.shard(np.arange(len(clip_ids)))
    local = rollout(agent, data_dir, clip_ids[mine], batch_size, workers,
                    None if partner_ids is None else partner_ids[mine])
    outputs = {k: ranks.gather(v).cpu() for k, v in local.items()}
    horizon = outputs["true"].shape[1]
    predictions = {
        "egoagent": outputs["pred"],
        "zero_velocity": zero_velocity(outputs["observed"], horizon),
        "constant_velocity": constant_velocity(outputs["observed"], horizon),
    }
    for control in IMAGE_CONTROLS if controls else ():
        predictions[f"egoagent_{control}"] = outputs[f"pred_{control}"]
    results = {name: motion_metrics(pred, outputs["true"], outputs["visible"])
               for name, pred in predictions.items()}
    for metrics in results.values():  # clips left out as bad count as skipped
        metrics["num_skipped"] += len(skipped)
        metrics["num_bad_clips"] = len(skipped)
    real = per_sample_mpjpe(outputs["pred"], outputs["true"], outputs["visible"])  # [n] cm
    for control in IMAGE_CONTROLS if controls else ():
        errors = per_sample_mpjpe(outputs[f"pred_{control}"], outputs["true"], outputs["visible"])
        results[f"egoagent_{control}"].update(
            delta_metrics("mpjpe_30fps", paired_bootstrap(errors, real, scale=1.0)))
    if ranks.is_main:
        _figures(outputs, Path(out_dir), num_figures)
    return results
