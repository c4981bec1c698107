"""Evaluation metrics in TensorBoard, beside the training curves of the run they came from.

An export made from `<run_dir>/checkpoints/step_N` (its metadata says which) writes
`eval/<task>/<method>/<metric>` scalars at step N into `<run_dir>/tensorboard`, so that evaluating
several checkpoints of a run draws a curve per metric.
"""

from __future__ import annotations

import math
from pathlib import Path


def run_tensorboard_dir(metadata: dict[str, str]) -> Path | None:
    """`<run_dir>/tensorboard` of the export's checkpoint, when that run folder is here."""
    checkpoint = Path(metadata.get("checkpoint", ""))
    if checkpoint.parent.name != "checkpoints" or not checkpoint.parent.parent.is_dir():
        return None
    return checkpoint.parent.parent / "tensorboard"


def write_eval_scalars(results: dict, log_dir: str | Path, step: int) -> int:
    """Add every finite metric as `eval/<task>/<method>/<metric>` at `step`; returns the count."""
    from torch.utils.tensorboard import SummaryWriter

    written = 0
    with SummaryWriter(str(log_dir)) as writer:
        for task, methods in results.items():
            for method, metrics in methods.items():
                for metric, value in metrics.items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        writer.add_scalar(f"eval/{task}/{method}/{metric}", value, step)
                        written += 1
    return written
