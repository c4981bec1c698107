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

    results = run_retrieval(agent, "data/egoexo4d/val", "runs/eval", ranks)
    results["egoagent"]["top1"], results["representation_only"]["map"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megatron_ego.data.clips import decode_frame
from megatron_ego.eval.features import (
    StoredFrames,
    ValClips,
    clip_table,
    extract,
    make_loader,
    open_val_clips,
    select_clips,
)
from megatron_ego.eval.retrieval import average_precision, retrieve_topk
from megatron_ego.runtime.processes import Processes


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


def _queries(agent, data_dir: str, clip_ids: np.ndarray, batch_size: int, workers: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted logits [c, T-1, K] of steps 0..T-2 of this rank's clips, and the clip ids [c]."""
    dataset = ValClips(data_dir, clip_ids, agent.image_size)
    logits, clips = [], []
    for frames, poses, clip in make_loader(dataset, batch_size, workers):
        predicted = agent.predict(frames, poses)  # [b, T, K]
        logits.append(predicted[:, :-1])  # [b, T-1, K]: steps whose next frame is in the clip
        clips.append(clip)
    if not logits:
        return torch.zeros(0, agent.num_steps - 1, agent.cfg.model.head_out_dim), \
            torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(clips).long()


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


def run_retrieval(agent, data_dir: str, out_dir: str | Path, ranks: Processes,
                  batch_size: int = 64, workers: int = 4, max_clips: int | None = None,
                  num_figures: int = 3) -> dict[str, dict[str, float]]:
    """Top-1 and mAP (percent) of EgoAgent's predicted next frame and of the representation-only
    baseline; figures of a few queries under ``out_dir/figures/`` (main rank)."""
    dataset = open_val_clips(data_dir, agent)
    T = agent.num_steps
    table = clip_table(data_dir)  # [N, 2 + T]
    clip_ids = select_clips(len(table), max_clips)
    frame_ids = np.unique(table[clip_ids, 2: 2 + T])  # gallery: every frame the clips use
    frames_info = (dataset.encoding, dataset.frame_size)
    gallery = _gallery(agent, data_dir, frame_ids, ranks, frames_info, batch_size, workers)
    predicted, clips = _queries(agent, data_dir, ranks.shard(clip_ids), batch_size, workers)
    steps = table[clips.numpy()][:, 2: 2 + T] if len(clips) else np.zeros((0, T), np.int64)
    rows = torch.from_numpy(np.searchsorted(frame_ids, steps)).to(ranks.device)  # [c, T]
    query = predicted.flatten(0, 1).to(ranks.device)  # [c*(T-1), K]
    exclude = rows[:, :-1].flatten()  # [q]: the input frame I_t
    target = rows[:, 1:].flatten()  # [q]: the real next frame I_{t+1}
    results = {}
    for method, q in (("egoagent", query), ("representation_only", gallery[exclude])):
        if len(q):
            top1, ap = average_precision(q, gallery, target, exclude)
        else:
            top1, ap = torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        top1, ap = ranks.gather(top1.to(ranks.device)), ranks.gather(ap.to(ranks.device))
        results[method] = {"top1": 100.0 * top1.double().mean().item(),
                           "map": 100.0 * ap.mean().item(),
                           "num_queries": int(top1.numel()), "gallery_size": int(len(frame_ids))}
    if ranks.is_main and num_figures and len(query):
        stored = StoredFrames(data_dir, frame_ids, agent.image_size, *frames_info)
        _figures(agent, query, gallery, target, exclude, frame_ids[exclude.cpu().numpy()],
                 frame_ids, stored, Path(out_dir), num_figures)
    return results
