"""Progress for people and for log files: a tqdm bar on a terminal; elsewhere (a SLURM log, a
pipe) one plain line every `every_s` seconds and one at the end, never `\\r` frames; nothing on
the ranks that are not asked to report (one report per job, from rank 0).

    bar = progress(total=120, desc="takes", unit="take", enabled=rank == 0)
    for item in items:
        ...
        bar.update(1)
    bar.close()
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class LineProgress:
    """The tqdm calls this project uses (update, write, close), as periodic text lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every_s: float = 30.0,
                 stream=None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every_s, self.stream = every_s, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.start_n = initial
        self.closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        left = ""
        if rate > 0 and 0 < self.n < self.total:
            left = f", about {max(self.total - self.n, 0) / rate:.0f} s left"
        return (f"{self.desc}: {self.n}/{self.total} {self.unit}s{share} in {elapsed:.0f} s"
                f"{left}")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.write(self._line())

    def write(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write(self._line())


def progress(total: int, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
             every_s: float = 30.0):
    """A tqdm bar (terminal), a LineProgress (not a terminal), or a silent bar (not enabled)."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    file=sys.stderr)
    return LineProgress(total, desc, unit, initial, every_s)
