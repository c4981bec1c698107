"""What stops a run that can no longer do good: divergence, non-finite weights, too much bad data.

Every decision is taken from numbers that are the same on all ranks (DeepSpeed's skipped-step
counter, all-reduced loss checks and record counts), so all ranks stop together with the same
one-line message and none waits forever in a collective.

    skips = SkippedSteps(cfg.optim.max_skipped_steps, is_main)
    skips.record(step, skipped=engine.skipped_steps > before, why="inf/nan gradients")
    check_finite_weights({"student": engine.module, "teacher": teacher}, step)  # before a save
    bad = BadRecords(cfg.data.max_bad_record_share, dataset_records)
    bad.add(skipped=2, drawn=1920)  # counts summed over ranks
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from megatron_ego.runtime.processes import multi_rank

__all__ = ["BadRecords", "SkippedSteps", "TrainingStopped", "check_finite_weights",
           "nonfinite_weights"]

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run must stop; the message says why and what to do. No checkpoint is written."""


class SkippedSteps:
    """Counts optimizer steps that changed no weight, and stops after `limit` in a row.

    A step is skipped when DeepSpeed's loss scaler found inf/nan gradients (its
    `engine.skipped_steps` grew; under fp32/bf16 too: ZeRO-2 checks every step) or when no
    micro-batch of the step had a finite loss.
    """

    def __init__(self, limit: int, is_main: bool) -> None:
        self.limit, self.is_main = limit, is_main
        self.in_a_row = 0
        self.total = 0
        self.streak: list[str] = []  # "step N: records" of the skipped steps in a row

    def record(self, step: int, skipped: bool, why: str = "", records: str = "") -> None:
        """Note whether optimizer step `step` (1-based) was skipped, and the data `records` it
        drew; raise after `limit` in a row (naming the records of the streak's steps)."""
        if not skipped:
            self.in_a_row = 0
            self.streak = []
            return
        self.in_a_row += 1
        self.total += 1
        if records:
            self.streak.append(f"step {step}: {records}")
        if self.is_main:
            log.warning("step %d skipped (%s): %d in a row, %d in this run%s", step, why,
                        self.in_a_row, self.total, f"; its records: {records}" if records else "")
        if self.in_a_row >= self.limit:
            named = "; ".join(self.streak)
            named = named if len(named) <= 600 else named[:600] + " ..."
            raise TrainingStopped(
                f"diverged: {self.in_a_row} optimizer steps in a row skipped ({why}) up to step "
                f"{step} (optim.max_skipped_steps={self.limit}); no checkpoint written: lower "
                "optim.lr, or check the data"
                + (f" (the skipped steps' records: {named})" if named else ""))


def nonfinite_weights(module: nn.Module) -> list[str]:
    """Names of the parameters and floating buffers of `module` holding a nan or an inf."""
    named = list(module.named_parameters()) + [
        (n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])  # [n] bool
    return [named[i][0] for i in torch.nonzero(~flags).flatten().tolist()]


def check_finite_weights(modules: dict[str, nn.Module], step: int) -> None:
    """Raise TrainingStopped, on every rank, when any rank's modules hold a non-finite weight."""
    bad = {name: nonfinite_weights(m) for name, m in modules.items()}
    first = next((f"{name}.{names[0]}" for name, names in bad.items() if names), "")
    device = next((p.device for m in modules.values() for p in m.parameters()), None)
    flag = torch.tensor([1.0 if first else 0.0], device=device)  # NCCL reduces device tensors
    if multi_rank():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        where = f" (e.g. {first})" if first else " (on another rank)"
        raise TrainingStopped(
            f"diverged: non-finite weights at step {step}{where}; checkpoint not written: "
            "lower optim.lr")


class BadRecords:
    """Records skipped because they failed to decode, against data.max_bad_record_share.

    The run stops once skipped > share x max(drawn, dataset records): early in a run that is an
    absolute count (the share of one pass over the data), so a few bad clips drawn in the first
    steps do not stop it, while a dataset that is broken throughout stops it within one pass.
    """

    def __init__(self, share: float, dataset_records: int) -> None:
        self.share, self.dataset_records = share, dataset_records
        self.skipped = 0
        self.drawn = 0

    def add(self, skipped: int, drawn: int) -> None:
        """Add counts (summed over ranks); raise TrainingStopped past the share."""
        self.skipped += skipped
        self.drawn += drawn
        limit = self.share * max(self.drawn, self.dataset_records)
        if self.skipped > limit:
            raise TrainingStopped(
                f"bad data: {self.skipped} of {self.drawn} records drawn failed to decode "
                f"(data.max_bad_record_share={self.share} allows {int(limit)}; the logged "
                "'bad record' lines name each file and index): re-run preprocessing, or raise "
                "data.max_bad_record_share")
