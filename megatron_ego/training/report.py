"""What the trainer reports once per logging interval (metrics.jsonl, TensorBoard, the console,
the run's record counters) and each step's throughput.

    count_records(state, bad_records, [bad, drawn], device)   # a collective; may stop the run
    flush_interval(engine, state, stats, logger, max_nonfinite_retries)  # may stop the run
    host.update(step_speed(per_clip, peak_tflops, world, sources, seconds))
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_ego.runtime.processes import multi_rank
from megatron_ego.training.guards import BadRecords, TrainingStopped
from megatron_ego.training.interval import IntervalStats, interval_means
from megatron_ego.training.metrics import MetricsLogger
from megatron_ego.training.state import TrainState


def count_records(state: TrainState, guard: BadRecords | None, records: list[int],
                  device: torch.device) -> None:
    """Sum (bad, drawn) over ranks into the run's counts; stop past the allowed share (once
    per log interval: a collective and a host read)."""
    counts = torch.tensor(records, dtype=torch.float64, device=device)
    if multi_rank():
        dist.all_reduce(counts)
    bad, drawn = (int(v) for v in counts.tolist())
    state.bad_records += bad
    state.drawn_records += drawn
    if guard is not None:
        guard.add(bad, drawn)


def flush_interval(engine, state: TrainState, stats: IntervalStats, logger: MetricsLogger,
                   max_nonfinite_retries: int) -> None:
    """The interval's one transfer: per-step records to metrics.jsonl, interval averages and
    per-source averages to TensorBoard; stop after too many non-finite steps in a row."""
    grad_norm = engine.get_global_grad_norm()  # the last step's (DeepSpeed's value)
    rows, means, by_source = stats.flush()
    if not rows:
        return
    if torch.is_tensor(grad_norm):
        grad_norm = grad_norm.item()
    rows[-1]["grad_norm"] = means["grad_norm"] = float(
        grad_norm if grad_norm is not None else float("nan"))
    for row in rows:
        if row.pop("nonfinite", 0.0) > 0:
            state.skipped_nonfinite += 1
            state.nonfinite_streak += 1
        else:
            state.nonfinite_streak = 0
        row["nonfinite_steps"] = state.skipped_nonfinite
        row["bad_records"] = state.bad_records
        logger.log(row["step"], row)
    for terms in (means, *by_source.values()):
        terms.pop("nonfinite", None)
    means.update(interval_means(rows))
    logger.log_averages(rows[-1]["step"], means, by_source)
    if state.nonfinite_streak > max_nonfinite_retries:
        raise TrainingStopped(
            f"diverged: non-finite loss in {state.nonfinite_streak} optimizer steps in a "
            f"row (up to step {rows[-1]['step']}; each was skipped; "
            f"run.max_nonfinite_retries={max_nonfinite_retries}); no checkpoint "
            "written: lower optim.lr, check the data, or resume from an earlier checkpoint")


def step_speed(per_clip: dict[str, dict], peak_tflops: float | None, world: int,
               sources: dict[str, int], seconds: float) -> dict[str, float]:
    """Throughput of the step just done, over all ranks (`sources`: this rank's samples of
    each source; every rank draws as many; `per_clip`: training/flops.py `clip_flops`)."""
    clips = sum(sources.values()) * world
    flops = sum(n * world * per_clip[src]["train"] for src, n in sources.items())
    tokens = sum(n * world * per_clip[src]["tokens"] for src, n in sources.items())
    out = {"clips_per_s": clips / seconds, "tokens_per_s": tokens / seconds,
           "tflops_per_device": flops / seconds / world / 1e12}
    if peak_tflops:
        out["mfu"] = out["tflops_per_device"] / peak_tflops
    return {k: v for k, v in out.items() if math.isfinite(v)}
