"""What a run carries from step to step (`TrainState`, saved in every checkpoint) and what one
optimizer step leaves behind (`StepResult`)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_ego.training.interval import StepTerms


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    micro_step: int = 0
    """Micro-batches drawn from the loader (the data position)."""
    skipped_nonfinite: int = 0
    """Optimizer steps whose loss was non-finite (bf16/fp32; DeepSpeed skipped them, as their
    gradients were too); counted at log intervals."""
    nonfinite_streak: int = 0
    """Consecutive such steps up to the last log interval."""
    skipped_steps: int = 0
    """Optimizer steps skipped (DeepSpeed's loss scaler found inf/nan gradients): no weight
    and no EMA update."""
    bad_records: int = 0
    """Records that failed to decode, over all ranks (replaced by the next sample)."""
    drawn_records: int = 0
    """Records read, over all ranks (the denominator of data.max_bad_record_share)."""


@dataclass
class StepResult:
    """What `Trainer.train_step` leaves: device-side terms and host-side facts."""

    terms: StepTerms
    values: dict[str, float]
    """The schedules' values used (lr, weight_decay, ema_momentum, teacher_temp)."""
    sources: dict[str, int]
    """This rank's samples per data source (every rank draws as many)."""
    data_wait_s: float
    """Seconds spent waiting for the loader."""
    records: tuple[int, int]
    """(records that failed to decode, records read) on this rank."""
