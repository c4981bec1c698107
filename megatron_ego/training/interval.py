"""A training step's loss terms, and one logging interval's steps, kept on the device.

A training step leaves its loss terms as 0-dim device tensors; reading them each step would
stall the host on the device (a sync per step). Each micro-batch's terms are stacked into one
vector and summed per data source (`StepTerms`); `IntervalStats` keeps the steps of a logging
interval with their host-side facts (sources, times, schedule values), and `flush()` moves all
of them to the host at once: one concatenation, one all-reduce (mean over data-parallel
ranks), one `.tolist()`.

    terms = StepTerms()
    terms.add("egoexo4d", {"loss": t, ...})                   # every micro-batch, no sync
    stats.add(step, terms, host)                               # every step, no sync
    rows, means, by_source = stats.flush()                     # every log interval
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class StepTerms:
    """Per source: the term names, the sum of its micro-batches' term vectors, and how many."""

    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, source: str, terms: dict[str, torch.Tensor]) -> None:
        keys = tuple(sorted(terms))
        vector = torch.stack([terms[k].float() for k in keys])  # [n_terms]
        if source in self.sums and self.keys[source] == keys:
            self.sums[source] = self.sums[source] + vector
            self.counts[source] += 1
        elif source in self.sums:
            raise ValueError(f"{source} micro-batches gave different loss terms in one step: "
                             f"{self.keys[source]} and {keys}")
        else:
            self.keys[source], self.sums[source], self.counts[source] = keys, vector, 1

    def means(self) -> dict[str, torch.Tensor]:
        """Each term's mean over the micro-batches that have it (device tensors)."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for src, keys in self.keys.items():
            for k, v in zip(keys, self.sums[src]):
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + self.counts[src]
        return {k: v / counts[k] for k, v in sums.items()}


class IntervalStats:
    """Steps of the current logging interval (see module docstring)."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.steps: list[tuple[int, StepTerms, dict]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, terms: StepTerms, host: dict) -> None:
        self.steps.append((step, terms, host))

    def flush(self) -> tuple[list[dict], dict[str, float], dict[str, dict[str, float]]]:
        """-> (one record per step: its host facts and its terms' means over its micro-batches,
        averaged over ranks; every term's mean over the interval's steps; per source, its terms'
        means over that source's micro-batches). Every rank must call it at the same steps (an
        all-reduce); ranks draw the same sources at the same micro-steps, so the layouts agree."""
        steps, self.steps = self.steps, []
        vectors = [t.sums[src] for _, t, _ in steps for src in sorted(t.sums)]
        if not vectors:
            return [{"step": s, **host} for s, _, host in steps], {}, {}
        values = torch.cat(vectors)
        if self.world_size > 1 and dist.is_initialized():
            values = values.double()
            dist.all_reduce(values)
            values /= self.world_size
        floats = iter(values.tolist())  # the interval's one device -> host transfer
        rows = []
        totals: dict[str, float] = {}
        steps_with: dict[str, int] = {}
        src_sums: dict[str, dict[str, float]] = {}
        src_counts: dict[str, int] = {}
        for step, terms, host in steps:
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for src in sorted(terms.sums):
                n = terms.counts[src]
                src_counts[src] = src_counts.get(src, 0) + n
                per_src = src_sums.setdefault(src, {})
                for key in terms.keys[src]:
                    value = next(floats)
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + n
                    per_src[key] = per_src.get(key, 0.0) + value
            row = {"step": step, **host, **{k: sums[k] / counts[k] for k in sums}}
            rows.append(row)
            for k in sums:
                totals[k] = totals.get(k, 0.0) + row[k]
                steps_with[k] = steps_with.get(k, 0) + 1
        means = {k: totals[k] / steps_with[k] for k in totals}
        by_source = {src: {k: v / src_counts[src] for k, v in terms.items()}
                     for src, terms in src_sums.items()}
        return rows, means, by_source


_LAST = ("lr", "weight_decay", "ema_momentum", "teacher_temp", "skipped_steps",
         "nonfinite_steps", "bad_records")
_RATES = ("clips_per_s", "tokens_per_s", "tflops_per_device", "mfu")


def interval_means(rows: list[dict]) -> dict[str, float]:
    """The host facts of an interval's step records (``flush()``'s rows) as one TensorBoard
    record: times and the WalkingTours share averaged over the steps, rates as the interval's
    work over its time, schedule values and run counters as of its last step."""
    seconds = sum(r["step_s"] for r in rows)
    out = {k: rows[-1][k] for k in _LAST if k in rows[-1]}
    out["step_s"] = seconds / len(rows)
    for key in ("data_wait_s", "walking_tours_share"):
        if all(key in r for r in rows):
            out[key] = sum(r[key] for r in rows) / len(rows)
    for key in _RATES:
        done = [r[key] * r["step_s"] for r in rows if key in r]
        if done and seconds > 0:
            out[key] = sum(done) / seconds  # work over the interval / its time
    return out
