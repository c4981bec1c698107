"""Counts of what a preprocessing run kept and skipped, by reason (written to stats.json)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

__all__ = ["Stats"]

log = logging.getLogger("preprocess")


class Stats:
    """Counters keyed by "group/reason" paths, plus the list of skipped takes with details.

        stats.count("windows_kept", 12)
        stats.skip("take_07", "video_unreadable", "moov atom not found")
        stats.to_dict()  # {"windows_kept": 12, "takes_skipped": {"video_unreadable": 1}, ...}
    """

    def __init__(self, counts: dict[str, int] | None = None, skipped: list | None = None) -> None:
        self.counts: Counter = Counter(counts or {})
        self.skipped: list[dict[str, str]] = list(skipped or [])

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] += int(n)

    def skip(self, unit: str, reason: str, detail: str = "") -> None:
        """Record (and log) that a whole take or video was left out."""
        self.counts[f"takes_skipped/{reason}"] += 1
        self.skipped.append({"take": unit, "reason": reason, "detail": detail})
        log.warning("skipped %s: %s %s", unit, reason, detail)

    def update(self, other: Stats) -> None:
        self.counts.update(other.counts)
        self.skipped.extend(other.skipped)

    def flat(self) -> dict[str, Any]:
        """The counters as one flat {"group/reason": n} dict plus "skipped" (shard files)."""
        return {"counts": dict(sorted(self.counts.items())), "skipped": self.skipped}

    @classmethod
    def from_flat(cls, data: dict[str, Any]) -> Stats:
        return cls(data.get("counts"), data.get("skipped"))

    def to_dict(self) -> dict[str, Any]:
        """Nested counters ("takes_skipped/video_unreadable" -> {"takes_skipped": {...}})."""
        out: dict[str, Any] = {}
        for key, value in sorted(self.counts.items()):
            group, _, reason = key.partition("/")
            if reason:
                out.setdefault(group, {})[reason] = value
            else:
                out[group] = value
        out["skipped"] = self.skipped
        return out

    def summary(self) -> str:
        """One line per counter, for the end-of-run log."""
        return "\n".join(f"  {key}: {value}" for key, value in sorted(self.counts.items()))
