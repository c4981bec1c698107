"""DINO loss: cross-entropy between a centred, sharpened teacher softmax and the student's.

    H(t, s) = - sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k

The center c is a buffer (state_dict-able) updated after each call from the teacher's batch mean,
all-reduced over data-parallel ranks: c <- m c + (1 - m) mean(t). By default c starts at 0, as
the official DINO; `center_init="first_batch"` (ours) sets c to the first batch mean before the
first loss instead, which removes the zero-start transient of a short run (the loss climbs
towards ln K while c catches up).

With `defer_center_updates()` (the trainer's choice) the teacher sums of every micro-batch of an
optimizer step are kept and `commit_center()` applies one update with the mean over the whole
global batch, as DINO does per iteration: the center then follows the same values on any number
of ranks and accumulation steps (with one accumulation step it is the same update as above).

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

    def defer_center_updates(self) -> None:
        """Keep each forward's teacher sums until `commit_center()` (once per optimizer step)."""
        self.defer_center = True

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
        first_batch = self.center_init == "first_batch"
        if self.centering == "ema" and first_batch and self.center_updates == 0:
            self.update_center(teacher)  # the first batch defines the starting center
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
            keep = ~torch.eye(vt, vs, dtype=torch.bool, device=ce.device)  # skip i == v
            loss = ce[keep].mean()
        else:
            if student.shape[0] != teacher.shape[0]:
                raise ValueError("paired DINO loss needs as many student as teacher views")
            loss = -(t_prob * s_logp).sum(-1).mean()
        if self.defer_center:
            self._pending.append(_batch_sum(teacher))
        else:
            self.update_center(teacher)
        return loss

    def pending(self) -> int:
        """Forwards kept since the last commit."""
        return len(self._pending)

    def drop_pending_since(self, kept: int) -> None:
        """Forget the teacher sums of the forwards after the first `kept` (a skipped micro-batch)."""
        del self._pending[kept:]

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
    def _apply_center(self, batch_sum: torch.Tensor, count: torch.Tensor) -> None:
        if multi_rank():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        if self.center_init == "first_batch" and self.center_updates == 0:
            self.center.copy_(batch_center)
        else:
            self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
        self.center_updates += 1


def _batch_sum(teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """teacher [V, n, K] -> (sum over views and samples [1, K], their number [])."""
    batch_sum = teacher.reshape(-1, teacher.shape[-1]).sum(0, keepdim=True)  # [1, K]
    count = torch.tensor(float(teacher.shape[0] * teacher.shape[1]), device=teacher.device)
    return batch_sum, count


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if multi_rank():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """[n, K] teacher logits -> [n, K] targets: rows sum to 1, columns (prototypes) share the
    global batch equally. Sums run over every data-parallel rank."""
    q = torch.exp((logits - logits.max()) / temp).t()  # [K, n]
    k = q.shape[0]
    n = torch.tensor(float(q.shape[1]), device=q.device)
    n = _all_reduce(n)
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)  # prototypes
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each view (local to its rank)
        q /= n
    return (q * n).t()  # [n, K], rows sum to 1
