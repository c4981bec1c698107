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

Usage::

    metrics = retrieval_metrics(pred_next, gallery, target_index, exclude_index)
    metrics["top1"], metrics["map"]   # percent
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
