"""Run logging on rank 0: metrics.jsonl (a record per step: loss terms, sources, step and
data-wait time, peak GPU memory), TensorBoard and a console line (averages over each
`log_interval` steps, per-source losses under `<source>/<term>`, the resolved config as text),
and a tqdm bar. Other ranks log nothing. The trainer hands over a whole interval at once
(training/interval.py: one device -> host transfer per interval).

On resume, `truncate_metrics` first drops the records of steps after the checkpoint (they are
done again), so every step appears once in metrics.jsonl.

A write that fails (a disk filled by another process: metrics.jsonl's write, or TensorBoard's
writer thread, whose error surfaces at the next add/flush) stops the run with one line
(TrainingStopped, exit 3) instead of a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time

from tqdm import tqdm

from megatron_ego.checkpoint_format.files import describe_write_error
from megatron_ego.training.guards import TrainingStopped

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(run_dir: str, step: int) -> int:
    """Drop the records of steps > `step` (and a torn last line) from metrics.jsonl, rewriting it
    atomically (fsynced temp file + rename). Returns how many lines were dropped."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut off by a kill
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


@contextlib.contextmanager
def _writing(path: str):
    """An OSError while writing `path` becomes one line that stops the run."""
    try:
        yield
    except OSError as err:
        raise TrainingStopped(
            f"{describe_write_error(err, path)}: the run's metrics could not be written; free "
            "space (or fix the file system) and resume") from err


class MetricsLogger:
    def __init__(self, run_dir: str, is_main: bool, log_interval: int, total_steps: int,
                 start_step: int, config_text: str | None = None):
        self.run_dir = run_dir
        self.is_main = is_main
        self.log_interval = max(1, log_interval)
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl_path = os.path.join(run_dir, METRICS_FILE)
        self.tb_path = os.path.join(run_dir, "tensorboard")
        with _writing(self.jsonl_path):
            os.makedirs(run_dir, exist_ok=True)
            self.jsonl = open(self.jsonl_path, "a", buffering=1)  # noqa: SIM115
        with _writing(self.tb_path):
            self.tb = SummaryWriter(self.tb_path, purge_step=start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step",
                        dynamic_ncols=True, file=sys.stderr, disable=not sys.stderr.isatty())
        if config_text is not None:  # markdown: indent as a code block to keep the layout
            text = "\n".join("    " + line for line in config_text.splitlines())
            with _writing(self.tb_path):
                self.tb.add_text("config", text, start_step)

    def log(self, step: int, scalars: dict) -> None:
        """Record the scalars of optimizer step `step` (1-based: steps done) in metrics.jsonl;
        `time` is the scalars' own (the trainer's: when the step ended), else now."""
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **scalars}  # the scalars' time wins
        with _writing(self.jsonl_path):
            self.jsonl.write(json.dumps(record) + "\n")
        self.bar.update(1)

    def log_averages(self, step: int, means: dict[str, float],
                     by_source: dict[str, dict[str, float]] | None = None) -> None:
        """TensorBoard and the console: averages over the interval ending at `step`; per source,
        its micro-batches' averages under `<source>/<term>`."""
        if not self.is_main:
            return
        with _writing(self.tb_path):
            for key, value in means.items():
                if isinstance(value, float | int) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
            for source, terms in (by_source or {}).items():
                for key, value in terms.items():
                    if math.isfinite(value):
                        self.tb.add_scalar(f"{source}/{key}", value, step)
            self.tb.flush()
        shown = ["loss", "loss_represent", "loss_predict", "loss_act", "lr", "clips_per_s", "mfu"]
        parts = [f"{k} {means[k]:.4g}" for k in shown if k in means]
        message = f"step {step:>7d} | " + " | ".join(parts)
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def close(self) -> None:
        """Close the files; a failure here is logged (the run's own outcome is reported)."""
        if not self.is_main:
            return
        for name, closer in (("metrics.jsonl", getattr(self.jsonl, "close", None)),
                             ("tensorboard", getattr(self.tb, "close", None)),
                             ("progress bar", getattr(self.bar, "close", None))):
            try:
                if closer is not None:
                    closer()
            except OSError as err:
                log.warning("could not close %s in %s: %s", name, self.run_dir, err)
