"""Predict: future-state retrieval on Ego-Exo4D (paper Sec. 4.2, Table 2).

The query set holds, per evaluation step, the model's predicted feature of frame t+1 from
(I_t, A_t); the gallery holds the features extracted from the real frames. A query succeeds when
its nearest gallery feature (cosine similarity) is the real frame t+1. The query's own input frame
I_t is removed from its ranking ("to avoid retrieving the exact same features"), since it is
usually in the gallery as another query's target. The representation-only baseline uses the
feature of frame t as the query: same function, same exclusion.

Relevance (our reading of the paper, documented choice): each query has exactly ONE relevant
gallery item, its true frame t+1. The paper's Top-1 (43.01) and mAP (58.06) are consistent with
this: with one relevant item, average precision is 1 / rank, so mAP is the mean reciprocal rank
and can never be below Top-1. ``positives`` lets a caller widen relevance (e.g. every frame of
the same take within a tolerance of t+1); AP is then the usual mean of precision at each relevant
item's rank.

Ties in similarity are ranked by gallery index (stable sort), lowest first.

By camera motion (paper Sec. 4.4: representation models "fail to retrieve future states when
humans have large movements"): ``step_motion`` measures, from each clip's stored camera motion
(docs/data_format.md), the rotation angle and the translation of the camera between I_t and
I_{t+1}; ``motion_breakdown`` gives Top-1, mAP and the number of queries and of distinct
(I_t, I_{t+1}) transitions per bin (``ROTATION_BINS`` in degrees, ``TRANSLATION_BINS`` in
metres). ``direction_hits`` tells whether a query is closer (cosine) to I_{t+1} than to I_{t-1}:
a prediction that knows where the view goes is; a copy of I_t is as close to either by chance.

Usage::

    metrics = retrieval_metrics(pred_next, gallery, target_index, exclude_index)
    metrics["top1"], metrics["map"]   # percent
    rotation, translation = step_motion(camera, image_step=5)   # [c, T-1] degrees, metres
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# (name, low, high): low <= value < high; names are results.json suffixes (top1_rot_ge10, ...)
ROTATION_BINS: tuple[tuple[str, float, float], ...] = (
    ("lt2", 0.0, 2.0), ("2to10", 2.0, 10.0), ("ge10", 10.0, math.inf))  # degrees
TRANSLATION_BINS: tuple[tuple[str, float, float], ...] = (
    ("lt5cm", 0.0, 0.05), ("5to15cm", 0.05, 0.15), ("ge15cm", 0.15, math.inf))  # metres
def bin_label(low: float, high: float, unit: str) -> str:
    """"< 2 deg", "2-10 deg", ">= 10 deg" for a bin's bounds."""
    if low == 0:
        return f"< {high:g} {unit}"
    return f">= {low:g} {unit}" if math.isinf(high) else f"{low:g}-{high:g} {unit}"


TURNING_DEG = 10.0  # direction accuracy is also reported for rotations of at least this


def _check(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, target_index: torch.Tensor,
    exclude_index: torch.Tensor | None, positives: torch.Tensor | None,
) -> None:
    if query_feats.ndim != 2 or gallery_feats.ndim != 2:
        raise ValueError(
            f"retrieval features must be 2-D; got query {tuple(query_feats.shape)}, gallery "
            f"{tuple(gallery_feats.shape)}"
        )
    q, g = query_feats.shape[0], gallery_feats.shape[0]
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"query and gallery widths differ ({query_feats.shape[1]} vs "
            f"{gallery_feats.shape[1]}): use the same head for both"
        )
    if q == 0 or g == 0:
        raise ValueError(f"retrieval needs queries and a gallery; got q={q}, g={g}")
    if target_index.shape != (q,):
        raise ValueError(f"target_index must be [q] = [{q}]; got {tuple(target_index.shape)}")
    if target_index.min() < 0 or target_index.max() >= g:
        raise ValueError(f"target_index must index the gallery [0, {g})")
    if exclude_index is not None:
        if exclude_index.shape != (q,):
            raise ValueError(
                f"exclude_index must be [q] = [{q}] (-1: nothing to exclude); got "
                f"{tuple(exclude_index.shape)}"
            )
        if exclude_index.max() >= g or exclude_index.min() < -1:
            raise ValueError(f"exclude_index must be -1 or index the gallery [0, {g})")
        if (exclude_index == target_index).any():
            raise ValueError("a query's excluded input frame is also its target: check the indices")
    if positives is not None and positives.shape != (q, g):
        raise ValueError(f"positives must be a [q, g] = [{q}, {g}] bool mask")


def _ranking(
    query_feats: torch.Tensor, gallery_t: torch.Tensor, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery order by descending cosine similarity; excluded items go last and are flagged.

    Returns (order [c, g] gallery indices, valid [c, g] bool: False at the excluded item).
    """
    similarity = F.normalize(query_feats.float(), dim=1) @ gallery_t  # [c, g]
    valid = torch.ones_like(similarity, dtype=torch.bool)  # [c, g]
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).squeeze(1)  # [e]
        valid[rows, exclude[rows]] = False
    similarity = similarity.masked_fill(~valid, float("-inf"))
    order = similarity.argsort(dim=1, descending=True, stable=True)  # [c, g]
    return order, valid.gather(1, order)


@torch.no_grad()
def retrieve_topk(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    exclude_index: torch.Tensor | None = None,
    k: int = 5,
) -> torch.Tensor:
    """Indices [q, k] of each query's k most similar gallery items, its excluded frame left out."""
    gallery_t = F.normalize(gallery_feats.float(), dim=1).t()  # [d, g]
    query_feats = query_feats.to(gallery_t.device)
    if exclude_index is not None:
        exclude_index = exclude_index.long().to(gallery_t.device)
    k = min(k, gallery_feats.shape[0] - (0 if exclude_index is None else 1))
    order, _ = _ranking(query_feats, gallery_t, exclude_index)  # [q, g]
    return order[:, :k]


@torch.no_grad()
def average_precision(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    target_index: torch.Tensor,
    exclude_index: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query Top-1 hit and average precision.

    Args:
        query_feats: [q, d] query features (predicted t+1, or frame t for representation-only).
        gallery_feats: [g, d] features of the real frames.
        target_index: [q] long, gallery index of each query's true frame t+1.
        exclude_index: [q] long, gallery index of the query's own input frame, -1 when it is not
            in the gallery; None excludes nothing.
        positives: optional [q, g] bool relevance mask; default: only ``target_index``. The target
            is always relevant; excluded items never count.
        chunk: queries ranked per step; memory is O(chunk x g).
    Returns:
        (top1 [q] bool, ap [q] float64 in [0, 1]).
    """
    target_index = target_index.long()
    if exclude_index is not None:
        exclude_index = exclude_index.long()
    _check(query_feats, gallery_feats, target_index, exclude_index, positives)
    gallery_t = F.normalize(gallery_feats.float(), dim=1).t()  # [d, g]
    device = gallery_t.device
    query_feats, target_index = query_feats.to(device), target_index.to(device)
    if exclude_index is not None:
        exclude_index = exclude_index.to(device)
    top1, ap = [], []
    for start in range(0, query_feats.shape[0], chunk):
        stop = start + chunk
        exclude = None if exclude_index is None else exclude_index[start:stop]
        order, valid = _ranking(query_feats[start:stop], gallery_t, exclude)  # [c, g]
        targets = target_index[start:stop]  # [c]
        if positives is None:
            relevant = order.eq(targets.view(-1, 1))  # [c, g]
        else:
            relevant = positives[start:stop].bool().to(device).gather(1, order)  # [c, g]
            relevant |= order.eq(targets.view(-1, 1))
        relevant &= valid
        hits = relevant.cumsum(dim=1).double()  # [c, g]
        ranks = torch.arange(1, order.shape[1] + 1, device=order.device, dtype=torch.float64)
        precision_at_hits = (hits / ranks) * relevant  # [c, g]
        ap.append(precision_at_hits.sum(dim=1) / relevant.sum(dim=1).double())
        top1.append(relevant[:, 0])
    return torch.cat(top1), torch.cat(ap)


def retrieval_metrics(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    target_index: torch.Tensor,
    exclude_index: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
    chunk: int = 256,
) -> dict[str, float]:
    """Top-1 accuracy and mAP, both in percent, of future-state retrieval.

    See ``average_precision`` for the arguments; with the default single relevant item, mAP is
    the mean reciprocal rank of the true frame t+1.
    """
    top1, ap = average_precision(
        query_feats, gallery_feats, target_index, exclude_index, positives, chunk
    )
    return {"top1": 100.0 * top1.double().mean().item(), "map": 100.0 * ap.mean().item()}


def step_motion(camera: np.ndarray, image_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera rotation (degrees) and translation (metres) between consecutive images of clips.

    Args:
        camera: [c, F, 3, 4] each frame's [R | t] in its clip's first camera frame (the
            dataset's `camera` file, F = T * image_step frames at 30 fps).
        image_step: frames between images (the manifest's poses_per_step, 5).
    Returns:
        (rotation [c, T-1], translation [c, T-1]): the angle of R_t^T R_{t+1} and the norm of
        t_{t+1} - t_t, where index t is image t's frame (t * image_step).
    """
    camera = np.asarray(camera, dtype=np.float64)
    if camera.ndim != 4 or camera.shape[2:] != (3, 4) or camera.shape[1] % image_step:
        raise ValueError(f"camera must be [c, T*{image_step}, 3, 4]; got {camera.shape}")
    images = camera[:, ::image_step]  # [c, T, 3, 4]
    before, after = images[:, :-1], images[:, 1:]  # [c, T-1, 3, 4]
    relative = np.einsum("ctji,ctjk->ctik", before[..., :3], after[..., :3])  # R_t^T R_{t+1}
    cosine = (np.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
    rotation = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    translation = np.linalg.norm(after[..., 3] - before[..., 3], axis=-1)
    return rotation, translation


@torch.no_grad()
def direction_hits(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, next_index: torch.Tensor,
    previous_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each query is closer (cosine) to its I_{t+1} than to its I_{t-1}.

    Args:
        query_feats: [q, d]; gallery_feats: [g, d]; next_index: [q] gallery index of I_{t+1};
        previous_index: [q] gallery index of I_{t-1}, -1 when it is not in the gallery.
    Returns:
        (hit [q] bool: strictly closer to I_{t+1}; counted [q] bool: I_{t-1} in the gallery).
    """
    query = F.normalize(query_feats.float(), dim=1)  # [q, d]
    gallery = F.normalize(gallery_feats.float().to(query.device), dim=1)  # [g, d]
    counted = previous_index.to(query.device) >= 0  # [q]
    previous = previous_index.to(query.device).clamp(min=0)
    to_next = (query * gallery[next_index.to(query.device)]).sum(dim=1)  # [q]
    to_previous = (query * gallery[previous]).sum(dim=1)  # [q]
    return (to_next > to_previous) & counted, counted


def _percent(values: torch.Tensor) -> float:
    return 100.0 * values.double().mean().item() if values.numel() else math.nan


def motion_breakdown(
    top1: torch.Tensor, ap: torch.Tensor, motion: torch.Tensor, bins, tag: str,
    transitions: torch.Tensor,
) -> dict[str, float | int]:
    """Top-1 and mAP (percent; NaN for an empty bin) and counts per bin of camera motion.

    Args:
        top1: [q] bool; ap: [q]; motion: [q] degrees or metres; bins: ROTATION_BINS or
        TRANSLATION_BINS; tag: key infix ("rot", "trans"); transitions: [q, 2] gallery indices
        (I_t, I_{t+1}) of each query, counted once per distinct pair.
    Returns:
        {top1_<tag>_<bin>, map_<tag>_<bin>, num_queries_<tag>_<bin>, num_transitions_<tag>_<bin>}.
    """
    out: dict[str, float | int] = {}
    motion = motion.to(top1.device)
    for name, low, high in bins:
        inside = (motion >= low) & (motion < high)  # [q]
        out[f"top1_{tag}_{name}"] = _percent(top1[inside])
        out[f"map_{tag}_{name}"] = _percent(ap[inside])
        out[f"num_queries_{tag}_{name}"] = int(inside.sum())
        pairs = transitions.to(top1.device)[inside]
        out[f"num_transitions_{tag}_{name}"] = int(torch.unique(pairs, dim=0).shape[0]) \
            if len(pairs) else 0
    return out


def direction_metrics(hit: torch.Tensor, counted: torch.Tensor, rotation: torch.Tensor
                      ) -> dict[str, float | int]:
    """Direction accuracy (percent) over the queries whose I_{t-1} is in the gallery, overall
    and for rotations of at least TURNING_DEG, with both query counts."""
    turning = counted & (rotation.to(counted.device) >= TURNING_DEG)
    return {
        "direction_accuracy": _percent(hit[counted]),
        "direction_accuracy_rot_ge10": _percent(hit[turning]),
        "num_direction_queries": int(counted.sum()),
        "num_direction_queries_rot_ge10": int(turning.sum()),
    }
