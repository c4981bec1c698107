"""Run logging on rank 0: metrics.jsonl (every step), tensorboard and a console line (every
`log_interval` steps), and a tqdm bar. Other ranks log nothing."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from tqdm import tqdm


class MetricsLogger:
    def __init__(self, run_dir: str, is_main: bool, log_interval: int, total_steps: int,
                 start_step: int):
        self.is_main = is_main
        self.log_interval = max(1, log_interval)
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not is_main:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)  # noqa: SIM115
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step",
                        dynamic_ncols=True, file=sys.stderr, disable=not sys.stderr.isatty())

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record the scalars of optimizer step `step` (1-based: steps done)."""
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **scalars}
        self.jsonl.write(json.dumps(record) + "\n")
        self.bar.update(1)
        if step % self.log_interval:
            return
        for key, value in scalars.items():
            if isinstance(value, float | int) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()
        shown = ["loss", "loss_represent", "loss_predict", "loss_act", "lr", "clips_per_s", "mfu"]
        parts = [f"{k} {scalars[k]:.4g}" for k in shown if k in scalars]
        message = f"step {step:>7d} | " + " | ".join(parts)
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def close(self) -> None:
        if self.is_main:
            self.jsonl.close()
            self.tb.close()
            self.bar.close()
