"""metrics.jsonl against its schema in docs/cluster.md, on the tiny run (conftest.py `tiny_run`:
4 steps in one log interval)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"


def documented() -> dict[str, str]:
    """{key: when} from the metrics.jsonl table of docs/cluster.md."""
    text = DOC.read_text()
    table = text[text.index("| key | when | meaning |"):].split("\n\n")[0]
    keys = {}
    for row in table.splitlines()[2:]:
        names, when = row.split(" | ")[:2]
        for name in re.findall(r"`(\w+)`", names):
            keys[name] = when.strip()
    return keys


def _records(tiny_run) -> list[dict]:
    lines = (tiny_run["run"] / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_every_key_is_documented_and_the_always_keys_are_always_there(tiny_run):
    schema = documented()
    always = {k for k, when in schema.items() if when == "always"}
    assert {"step", "time", "loss", "step_s"} <= always
    records = _records(tiny_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert always <= record.keys(), always - record.keys()
        assert record.keys() <= schema.keys(), record.keys() - schema.keys()  # none undocumented
    assert "grad_norm" in records[-1]  # the last step of its interval


def test_time_is_each_steps_end_not_the_intervals(tiny_run):
    """The 4 steps are written together (one log interval): had `time` been the writing time, the
    records would be microseconds apart; each step's end is its step time after the one before."""
    records = _records(tiny_run)
    for before, after in zip(records, records[1:]):
        gap = after["time"] - before["time"]
        assert gap >= 0.9 * after["step_s"] > 0, (before["step"], gap, after["step_s"])
