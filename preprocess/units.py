"""The unit of preprocessing work: one take or video (no heavy imports, so that the
preprocessors' `--check` finds the units without loading torch or megatron)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Unit:
    """One take or video to process: its name, id, and source-specific inputs (paths)."""

    name: str
    uid: str
    inputs: dict[str, Any] = field(default_factory=dict)
