"""DINO loss: cross-entropy between a centred, sharpened teacher softmax and the student's.

    H(t, s) = - sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k

The center c is a buffer (state_dict-able) updated after each call from the teacher's batch mean,
all-reduced over data-parallel ranks: c <- m c + (1 - m) mean(t). The first update sets c to the
first batch mean (ours; DINO starts from c = 0, which makes the first steps' targets and losses
an artefact of the zero start: the loss climbs towards ln K while c catches up).

`centering="sinkhorn_knopp"` replaces the centred softmax by Sinkhorn-Knopp normalisation of
exp(t / tau_t) over the (all-ranks) batch, as DINOv2 offers: every prototype gets an equal share
of the batch and every view a distribution, so targets are spread from the first step; it does
not depend on a running center, which helps small batches and short runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Multi-view DINO loss with teacher centering (facebookresearch/dino's DINOLoss semantics)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in ("ema", "sinkhorn_knopp"):
            raise ValueError(f"centering={centering!r}: expected 'ema' or 'sinkhorn_knopp'")
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))  # [1, K]
        self.register_buffer("center_updates", torch.zeros((), dtype=torch.long))

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
        # The center's bookkeeping stays on the device (no host read of `center_updates`).
        batch_center = self._batch_center(teacher)  # [1, K], all ranks
        if self.centering == "ema":
            self._update_center(batch_center, first_only=True)  # the first batch starts it
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
        self._update_center(batch_center)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """teacher [V, n, K]: EMA of the batch mean, averaged over all data-parallel ranks."""
        self._update_center(self._batch_center(teacher))

    @torch.no_grad()
    def _batch_center(self, teacher: torch.Tensor) -> torch.Tensor:
        """teacher [V, n, K] -> [1, K]: the mean over all views, samples and ranks."""
        batch_sum = teacher.reshape(-1, teacher.shape[-1]).sum(0, keepdim=True)  # [1, K]
        count = torch.full((), float(teacher.shape[0] * teacher.shape[1]), device=teacher.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        return batch_sum / count

    @torch.no_grad()
    def _update_center(self, batch_center: torch.Tensor, first_only: bool = False) -> None:
        """c <- batch mean on the first update, else m c + (1 - m) batch mean, chosen on the
        device. `first_only`: only the first update (a later center is left as it is)."""
        first = self.center_updates == 0  # bool, on the device
        if first_only:
            new = torch.where(first, batch_center, self.center)
            self.center_updates += first.long()
        else:
            ema = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
            new = torch.where(first, batch_center, ema)
            self.center_updates += 1
        self.center.copy_(new)


_OFF_DIAGONAL: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _off_diagonal(vt: int, vs: int, device: torch.device) -> torch.Tensor:
    """int64 indices of the (i, v), i != v entries of a flattened [vt, vs] matrix, row-major,
    built on `device` once per shape (a bool mask would need a host sync to index with)."""
    key = (vt, vs, device)
    if key not in _OFF_DIAGONAL:
        pairs = [i * vs + v for i in range(vt) for v in range(vs) if i != v]
        _OFF_DIAGONAL[key] = torch.tensor(pairs, device=device)
    return _OFF_DIAGONAL[key]


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
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
