"""Predict benchmark: future-state retrieval on preprocessed Ego-Exo4D val clips.

Gallery: the representation-head logits (``represent(..., with_logits=True)``) of every stored
frame the evaluated clips use, each frame once. Queries: for every clip and every step
t = 0 .. T-2, the state-prediction-head logits of step t (``predict`` on the clip with its true
poses; step t sees I_<=t and A_<=t only) must retrieve the real frame I_{t+1}; the query's own
input frame I_t is left out of its ranking. The representation-only baseline queries with the
gallery entry of I_t itself (same exclusion). Both spaces are the K prototypes' cosine
similarities, the space the prediction loss aligns (see megatron_ego/inference.py).

Ranks: each extracts a block of the gallery and of the clips; the gallery is gathered on every
rank, queries are scored where they were computed and the per-query results gathered.

Beside overall Top-1 and mAP, every method is split by the camera's motion between I_t and
I_{t+1} (from the dataset's `camera` file; `retrieval.step_motion`): Top-1, mAP, query and
distinct-transition counts per rotation bin (<2, 2-10, >=10 degrees: `top1_rot_ge10`, ...) and
per translation bin (`top1_trans_ge15cm`, ...), and the direction accuracy: of the queries
whose I_{t-1} (the stored frame one step before I_t in the same take) is in the gallery, the
share closer to I_{t+1} than to I_{t-1}, overall and for rotations of 10 degrees or more. A
figure `figures/top1_by_rotation.png` shows Top-1 per rotation bin for both methods.

    results = run_retrieval(agent, "data/egoexo4d/val", "runs/eval", ranks)
    results["egoagent"]["top1"], results["representation_only"]["map"]
    results["egoagent"]["top1_rot_ge10"], results["egoagent"]["direction_accuracy_rot_ge10"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from megatron_ego.data.clips import decode_frame
from megatron_ego.eval.controls import (
    ACTION_CONTROLS,
    control_partners,
    control_poses,
    delta_metrics,
    paired_bootstrap,
)
from megatron_ego.eval.features import (
    PairedClips,
    StoredFrames,
    camera_table,
    clip_table,
    extract,
    make_loader,
    open_val_clips,
    select_clips,
    usable_clips,
)
from megatron_ego.eval.retrieval import (
    ROTATION_BINS,
    TRANSLATION_BINS,
    TURNING_DEG,
    average_precision,
    bin_label,
    direction_hits,
    direction_metrics,
    motion_breakdown,
    retrieve_topk,
    step_motion,
)
from megatron_ego.runtime.processes import Processes

log = logging.getLogger(__name__)


def _gallery(agent, data_dir: str, frame_ids: np.ndarray, ranks: Processes, frames_info,
             batch_size: int, workers: int) -> torch.Tensor:
    """Representation logits [g, K] of ``frame_ids`` (sorted), gathered on every rank."""
    encoding, frame_size = frames_info
    mine = StoredFrames(data_dir, ranks.shard(frame_ids), agent.image_size, encoding, frame_size)
    outputs, ids = extract(make_loader(mine, batch_size, workers),
                           lambda x: agent.represent(x, with_logits=True))
    logits = outputs[1] if outputs else torch.zeros(0, agent.cfg.model.head_out_dim)
    gallery, gathered_ids = ranks.gather(logits.to(ranks.device)), ranks.gather(ids.to(ranks.device))
    if not torch.equal(gathered_ids.cpu(), torch.from_numpy(frame_ids)):
        raise RuntimeError("gathered gallery frames are out of order: rank blocks disagree")
    return gallery  # [g, K]


def _queries(agent, data_dir: str, clip_ids: np.ndarray, partner_ids: np.ndarray | None,
             batch_size: int, workers: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Predicted logits [c, T-1, K] of steps 0..T-2 of this rank's clips, with their true actions
    ("egoagent") and, when ``partner_ids`` is given, with each action control of
    eval/controls.py ("egoagent_<control>_actions"); and the clip ids [c]."""
    names = ["egoagent"] + ([f"egoagent_{c}_actions" for c in ACTION_CONTROLS]
                            if partner_ids is not None else [])
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    clips = []
    partners = clip_ids if partner_ids is None else partner_ids
    dataset = PairedClips(data_dir, clip_ids, agent.image_size, partners, partner_frames=False)
    for frames, poses, _, partner_poses, clip in make_loader(dataset, batch_size, workers):
        logits["egoagent"].append(agent.predict(frames, poses)[:, :-1])  # [b, T-1, K]
        for control in ACTION_CONTROLS if partner_ids is not None else ():
            fed = control_poses(poses, control, agent.poses_per_step, partner_poses)
            logits[f"egoagent_{control}_actions"].append(agent.predict(frames, fed)[:, :-1])
        clips.append(clip)
    if not clips:
        empty = torch.zeros(0, agent.num_steps - 1, agent.cfg.model.head_out_dim)
        return {name: empty for name in names}, torch.zeros(0, dtype=torch.int64)
    return {name: torch.cat(v) for name, v in logits.items()}, torch.cat(clips).long()


def _figures(agent, query, gallery, target, exclude, query_frames, gallery_ids, frames,
             out_dir: Path, count: int) -> list[Path]:
    """PNG per example: the query's input frame, its top-5 gallery frames and the true next frame
    with its rank, for EgoAgent (top row) and the representation-only baseline (bottom row)."""
    from megatron_ego.eval.figures import plot_retrieval_examples

    def ranked(q_feats: torch.Tensor, q: int):
        """Top-5 frames, the target's position among them (or None) and its rank overall."""
        order = retrieve_topk(q_feats, gallery, exclude[q: q + 1], k=len(gallery))[0].cpu()
        rank = int((order == target[q].cpu()).nonzero()[0, 0]) + 1
        top = order[:5]
        shown = np.stack([decode_frame(frames.raw(int(gallery_ids[r]))) for r in top])
        return shown, (rank - 1 if rank <= len(top) else None), rank

    paths = []
    picks = np.unique(np.linspace(0, len(query) - 1, count).round().astype(int)) if count else []
    for q in picks:
        shown, marker, rank = ranked(query[q: q + 1], q)
        baseline = ranked(gallery[exclude[q: q + 1]], q)  # the input frame's own feature
        image = decode_frame(frames.raw(int(query_frames[q])))
        true_next = decode_frame(frames.raw(int(gallery_ids[int(target[q])])))
        paths.append(plot_retrieval_examples(image, shown, marker,
                                             out_dir / "figures" / f"retrieval_{q:05d}.png",
                                             target_img=true_next, target_rank=rank,
                                             baseline=baseline))
    return paths


def _previous_rows(table: np.ndarray, clip_ids: np.ndarray, clips: np.ndarray,
                   frame_ids: np.ndarray, image_step: int) -> np.ndarray:
    """Gallery row of each query's I_{t-1} (the same take's image one step before I_t), -1 when
    no evaluated clip uses that frame. Returns [c, T-1] for this rank's ``clips``."""
    T = table.shape[1] - 2
    where = {}  # (take, 30 fps frame) -> stored frame id, over every evaluated clip
    for row in table[clip_ids]:
        for t in range(T):
            where[(int(row[0]), int(row[1]) + image_step * t)] = int(row[2 + t])
    previous = np.full((len(clips), T - 1), -1, dtype=np.int64)
    for i, row in enumerate(table[clips]):
        for t in range(T - 1):
            frame = where.get((int(row[0]), int(row[1]) + image_step * (t - 1)))
            if frame is not None:
                previous[i, t] = int(np.searchsorted(frame_ids, frame))
    return previous


def _scored(q: torch.Tensor, gallery: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor,
            previous: torch.Tensor, ranks: Processes) -> dict[str, torch.Tensor]:
    """Per-query Top-1 hit, AP, direction hit and whether it counts, gathered over ranks [Q]."""
    if len(q):
        top1, ap = average_precision(q, gallery, target, exclude)
        hit, counted = direction_hits(q, gallery, target, previous)
    else:
        top1, ap = torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        hit = counted = torch.zeros(0, dtype=torch.bool)
    return {k: ranks.gather(v.to(ranks.device))
            for k, v in (("top1", top1), ("ap", ap), ("hit", hit), ("counted", counted))}


def _control_deltas(real: dict[str, torch.Tensor], control: dict[str, torch.Tensor],
                    rotation: torch.Tensor) -> dict[str, float]:
    """Real minus control (percentage points, paired bootstrap 95% interval) of Top-1, overall
    and per rotation bin, and of the direction accuracy, overall and on turning queries."""
    out: dict[str, float] = {}
    out.update(delta_metrics("top1", paired_bootstrap(real["top1"], control["top1"])))
    for name, low, high in ROTATION_BINS:
        inside = (rotation >= low) & (rotation < high)
        out.update(delta_metrics(f"top1_rot_{name}",
                                 paired_bootstrap(real["top1"], control["top1"], inside)))
    counted = real["counted"]
    out.update(delta_metrics("direction_accuracy",
                             paired_bootstrap(real["hit"], control["hit"], counted)))
    out.update(delta_metrics("direction_accuracy_rot_ge10", paired_bootstrap(
        real["hit"], control["hit"], counted & (rotation >= TURNING_DEG))))
    return out


def run_retrieval(agent, data_dir: str, out_dir: str | Path, ranks: Processes,
                  batch_size: int = 64, workers: int = 4, max_clips: int | None = None,
                  num_figures: int = 3, controls: bool = True) -> dict[str, dict[str, float]]:
    """Top-1 and mAP (percent) of EgoAgent's predicted next frame and of the representation-only
    baseline; with ``controls``, the same with each action control of eval/controls.py and its
    difference from the true actions; figures of a few queries under ``out_dir/figures/``
    (main rank)."""
    dataset = open_val_clips(data_dir, agent)
    T = agent.num_steps
    image_step = int(dataset.manifest["poses_per_step"])
    table = clip_table(data_dir)  # [N, 2 + T]
    clip_ids, skipped = usable_clips(dataset, select_clips(len(table), max_clips))
    if ranks.is_main:
        for why in skipped:
            log.warning("retrieval: skipped a val clip, %s", why)
    frame_ids = np.unique(table[clip_ids, 2: 2 + T])  # gallery: every frame the clips use
    frames_info = (dataset.encoding, dataset.frame_size)
    gallery = _gallery(agent, data_dir, frame_ids, ranks, frames_info, batch_size, workers)
    controls = controls and len(clip_ids) >= 2
    partner_ids = control_partners(data_dir, clip_ids, T * image_step) if controls else None
    mine = ranks.shard(np.arange(len(clip_ids)))
    predicted, clips = _queries(agent, data_dir, clip_ids[mine],
                                None if partner_ids is None else partner_ids[mine],
                                batch_size, workers)
    steps = table[clips.numpy()][:, 2: 2 + T] if len(clips) else np.zeros((0, T), np.int64)
    rows = torch.from_numpy(np.searchsorted(frame_ids, steps)).to(ranks.device)  # [c, T]
    exclude = rows[:, :-1].flatten()  # [q]: the input frame I_t
    target = rows[:, 1:].flatten()  # [q]: the real next frame I_{t+1}
    local = clips.numpy()
    rotation, translation = step_motion(camera_table(data_dir, T * image_step)[local], image_step) \
        if len(local) else (np.zeros((0, T - 1)), np.zeros((0, T - 1)))
    previous = torch.from_numpy(_previous_rows(table, clip_ids, local, frame_ids, image_step)
                                ).flatten().to(ranks.device)  # [q]: I_{t-1}, -1 if not shown
    motion = {name: ranks.gather(torch.from_numpy(values).flatten().to(ranks.device))
              for name, values in (("rot", rotation), ("trans", translation))}  # [Q] each
    transitions = ranks.gather(torch.stack([exclude, target], dim=1))  # [Q, 2]
    queries = {name: logits.flatten(0, 1).to(ranks.device) for name, logits in predicted.items()}
    queries["representation_only"] = gallery[exclude]  # [q, K]
    results, scored = {}, {}
    for method, q in queries.items():
        scored[method] = s = _scored(q, gallery, target, exclude, previous, ranks)
        results[method] = {"top1": 100.0 * s["top1"].double().mean().item(),
                           "map": 100.0 * s["ap"].mean().item(),
                           "num_queries": int(s["top1"].numel()), "gallery_size": int(len(frame_ids)),
                           "num_bad_clips": len(skipped),
                           **motion_breakdown(s["top1"], s["ap"], motion["rot"], ROTATION_BINS,
                                              "rot", transitions),
                           **motion_breakdown(s["top1"], s["ap"], motion["trans"],
                                              TRANSLATION_BINS, "trans", transitions),
                           **direction_metrics(s["hit"], s["counted"], motion["rot"])}
    for control in ACTION_CONTROLS if controls else ():
        method = f"egoagent_{control}_actions"
        results[method].update(_control_deltas(scored["egoagent"], scored[method],
                                               motion["rot"].to(scored[method]["top1"].device)))
    if ranks.is_main:
        from megatron_ego.eval.figures import plot_top1_by_bin

        labels = [(name, bin_label(low, high, "deg")) for name, low, high in ROTATION_BINS]
        plot_top1_by_bin(results, "rot", labels,
                         Path(out_dir) / "figures" / "top1_by_rotation.png")
    query = queries["egoagent"]
    if ranks.is_main and num_figures and len(query):
        stored = StoredFrames(data_dir, frame_ids, agent.image_size, *frames_info)
        _figures(agent, query, gallery, target, exclude, frame_ids[exclude.cpu().numpy()],
                 frame_ids, stored, Path(out_dir), num_figures)
    return results
