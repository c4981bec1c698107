"""Per-iteration schedules, precomputed as arrays (DINO style): lr, weight decay, EMA momentum,
teacher temperature. Index i is the value used for optimizer step i (0-based)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_ego.config import Config


def cosine_schedule(start: float, end: float, iters: int, warmup_iters: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up warmup_start -> start over `warmup_iters`, then cosine start -> end.

    [iters] float64; the last value equals `end` (when iters - warmup_iters > 1).
    """
    warmup = np.linspace(warmup_start, start, warmup_iters, endpoint=False)
    n = iters - warmup_iters
    steps = np.arange(n)
    denom = max(n - 1, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * steps / denom))
    return np.concatenate([warmup, cosine])


def linear_warmup(start: float, end: float, iters: int, warmup_iters: int) -> np.ndarray:
    """start -> end linearly over warmup_iters, then constant `end`: [iters]."""
    ramp = np.linspace(start, end, warmup_iters, endpoint=False)
    return np.concatenate([ramp, np.full(iters - warmup_iters, end)])


@dataclass
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    ema_momentum: np.ndarray
    teacher_temp: np.ndarray

    def at(self, step: int) -> dict[str, float]:
        i = min(step, len(self.lr) - 1)
        return {"lr": float(self.lr[i]), "weight_decay": float(self.weight_decay[i]),
                "ema_momentum": float(self.ema_momentum[i]),
                "teacher_temp": float(self.teacher_temp[i])}


def build_schedules(cfg: Config) -> Schedules:
    n, o = cfg.schedule.train_iters, cfg.optim
    loss = cfg.loss
    return Schedules(
        lr=cosine_schedule(o.lr, o.lr * o.min_lr_ratio, n, cfg.schedule.warmup_iters),
        weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, n),
        ema_momentum=cosine_schedule(cfg.ema.momentum, cfg.ema.momentum_end, n),
        teacher_temp=linear_warmup(loss.warmup_teacher_temp, loss.teacher_temp, n,
                                   min(loss.warmup_teacher_temp_iters, n)),
    )
