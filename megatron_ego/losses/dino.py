"""DINO loss: cross-entropy between a centred, sharpened teacher softmax and the student's.

    H(t, s) = - sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k

The center c is a buffer (state_dict-able) updated after each call from the teacher's batch mean,
all-reduced over data-parallel ranks: c <- m c + (1 - m) mean(t). By default c starts at 0, as
the official DINO; `center_init="first_batch"` (ours) sets c to the mean of the first
micro-batch of the global batch's slot 0 (rank 0's first) before the first loss instead, which
removes the zero-start transient of a short run (the loss climbs towards ln K while c catches
up) and is the same on any number of ranks.

With `defer_center_updates()` (the trainer's choice) the teacher sums of every micro-batch of an
optimizer step are kept and `commit_center()` applies one update with the mean over the whole
global batch, as DINO does per iteration: the center then follows the same values on any number
of ranks and accumulation steps (with one accumulation step it is the same update as above).

`centering="sinkhorn_knopp"` replaces the centred softmax by Sinkhorn-Knopp normalisation of
exp(t / tau_t) over the (all-ranks) batch, as DINOv2 offers: every prototype gets an equal share
of the batch and every view a distribution, so targets are spread from the first step; it does
not depend on a running center, which helps small batches and short runs.

The center's bookkeeping never reads a tensor on the host during a step (the trainer's step is
sync-free): whether the first batch still has to set the center is a Python flag, re-read from
`center_updates` only when a state dict is loaded.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron_ego.runtime.processes import multi_rank


class DINOLoss(nn.Module):
    """Multi-view DINO loss with teacher centering (facebookresearch/dino's DINOLoss semantics)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3,
                 center_init: str = "zero"):
        super().__init__()
        if centering not in ("ema", "sinkhorn_knopp"):
            raise ValueError(f"centering={centering!r}: expected 'ema' or 'sinkhorn_knopp'")
        if center_init not in ("zero", "first_batch"):
            raise ValueError(f"center_init={center_init!r}: expected 'zero' or 'first_batch'")
        self.center_init = center_init
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))  # [1, K]
        self.register_buffer("center_updates", torch.zeros((), dtype=torch.long))
        self.defer_center = False
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sum [1, K], count [])
        self._first_pending = center_init == "first_batch"  # the first batch must set c

    def defer_center_updates(self) -> None:
        """Keep each forward's teacher sums until `commit_center()` (once per optimizer step)."""
        self.defer_center = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # one host read, at load time (never during a step)
        self._first_pending = (self.center_init == "first_batch"
                               and int(self.center_updates) == 0)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        teacher_temp: float,
        skip_same_view: bool = True,
    ) -> torch.Tensor:
        """student [Vs, n, K], teacher [Vt, n, K] logits -> mean cross-entropy over view pairs.

        With `skip_same_view`, the pair (teacher view i, student view i) is left out (the global
        crops come first in both); otherwise views are paired one to one (Vs == Vt).
        """
        if student.shape[1:] != teacher.shape[1:]:
            raise ValueError(
                f"student logits {tuple(student.shape)} and teacher logits "
                f"{tuple(teacher.shape)} must agree in [n, K]"
            )
        teacher = teacher.detach().float()
        if self.centering == "ema" and self._first_pending:
            self._set_first_center(*_batch_sum(teacher))  # the first batch defines the center
        if self.centering == "sinkhorn_knopp":
            t_prob = sinkhorn_knopp(teacher.flatten(0, 1), teacher_temp,
                                    self.sinkhorn_iterations).view_as(teacher)  # [Vt, n, K]
        else:
            t_prob = F.softmax((teacher - self.center) / teacher_temp, dim=-1)  # [Vt, n, K]
        s_logp = F.log_softmax(student.float() / self.student_temp, dim=-1)  # [Vs, n, K]
        if skip_same_view:
            vt, vs = t_prob.shape[0], s_logp.shape[0]
            if vs < 2:
                raise ValueError("DINO loss: no view pairs left (need more than one view)")
            # ce[i, v] = mean over n of H(teacher view i, student view v), all pairs at once.
            ce = -torch.einsum("ink,vnk->iv", t_prob, s_logp) / t_prob.shape[1]  # [Vt, Vs]
            keep = _off_diagonal(vt, vs, ce.device)  # skip i == v (indices, not a bool mask)
            loss = ce.flatten()[keep].mean()
        else:
            if student.shape[0] != teacher.shape[0]:
                raise ValueError("paired DINO loss needs as many student as teacher views")
            loss = -(t_prob * s_logp).sum(-1).mean()
        if self.defer_center:
            self._pending.append(_batch_sum(teacher))
        else:
            self._apply_center(*_batch_sum(teacher))
        return loss

    @torch.no_grad()
    def commit_center(self) -> None:
        """One center update from the micro-batches since the last commit (collective when
        any were kept; every rank keeps the same number, the source being shared)."""
        if not self._pending:
            return
        batch_sum = torch.stack([s for s, _ in self._pending]).sum(0)  # [1, K]
        count = torch.stack([c for _, c in self._pending]).sum()
        self._pending.clear()
        self._apply_center(batch_sum, count)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """teacher [V, n, K]: EMA of the batch mean, averaged over all data-parallel ranks."""
        self._apply_center(*_batch_sum(teacher))

    @torch.no_grad()
    def _set_first_center(self, batch_sum: torch.Tensor, count: torch.Tensor) -> None:
        """center_init="first_batch": c <- the mean of the first micro-batch of slot 0 of the
        global batch (rank 0's first), before its loss, on every rank. Slot 0's samples are the
        same on any number of ranks and accumulation steps, so the run is too: averaging over
        the ranks instead would take W micro-batches on W ranks but one on 1 rank x W
        accumulation steps, whose first loss comes before its second micro-batch exists."""
        if multi_rank():
            dist.broadcast(batch_sum, src=0)
            dist.broadcast(count, src=0)
        self.center.copy_(batch_sum / count)
        self.center_updates += 1
        self._first_pending = False

    @torch.no_grad()
    def _apply_center(self, batch_sum: torch.Tensor, count: torch.Tensor) -> None:
        """c <- m c + (1 - m) batch mean (all ranks); computed on the device."""
        if multi_rank():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count  # [1, K]
        if self._first_pending:  # update_center() before any forward, first_batch init
            self.center.copy_(batch_center)
            self._first_pending = False
        else:
            self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
        self.center_updates += 1


_OFF_DIAGONAL: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _off_diagonal(vt: int, vs: int, device: torch.device) -> torch.Tensor:
    """int64 indices of the (i, v), i != v entries of a flattened [vt, vs] matrix, row-major,
    built on `device` once per shape (a bool mask would need a host sync to index with)."""
    key = (vt, vs, device)
    if key not in _OFF_DIAGONAL:
        pairs = [i * vs + v for i in range(vt) for v in range(vs) if i != v]
        _OFF_DIAGONAL[key] = torch.tensor(pairs, device=device)
    return _OFF_DIAGONAL[key]


def _batch_sum(teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """teacher [V, n, K] -> (sum over views and samples [1, K], their number [])."""
    batch_sum = teacher.reshape(-1, teacher.shape[-1]).sum(0, keepdim=True)  # [1, K]
    count = torch.full((), float(teacher.shape[0] * teacher.shape[1]), device=teacher.device)
    return batch_sum, count


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if multi_rank():
        dist.all_reduce(x)
    return x


def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """[n, K] teacher logits -> [n, K] targets: rows sum to 1, columns (prototypes) share the
    global batch equally. Sums run over every data-parallel rank."""
    q = torch.exp((logits - logits.max()) / temp).t()  # [K, n]
    k = q.shape[0]
    n = torch.full((), float(q.shape[1]), device=q.device)
    n = _all_reduce(n)
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)  # prototypes
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each view (local to its rank)
        q /= n
    return (q * n).t()  # [n, K], rows sum to 1
