"""The checkpoints of a run folder: where they are, which is the newest, whose run they are,
and which one a resume (or an export) takes.

    <run_dir>/RUN                    the run id (json), written when the run starts
    <run_dir>/checkpoints/step_0000100/  one checkpoint, whole when its COMPLETE verifies
    <run_dir>/checkpoints/latest     the newest complete tag, replaced atomically after COMPLETE

    found, failed = find_resume_checkpoint(run_dir, run_id=read_run_id(run_dir))
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from pathlib import Path

from megatron_ego.checkpoint_format.files import atomic_write_text
from megatron_ego.checkpoint_format.manifest import COMPLETE, read_manifest, verify

log = logging.getLogger(__name__)

LATEST = "latest"
RUN_FILE = "RUN"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def step_of(folder: Path) -> int:
    match = _TAG.match(folder.name)
    return int(match.group(1)) if match else -1


# ------------------------------------------------------------------------------ run identity
def read_run_id(run_dir: str | Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_run_id(run_dir: str | Path, run_id: str | None = None) -> str:
    run_id = run_id or uuid.uuid4().hex
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / RUN_FILE,
                      json.dumps({"run_id": run_id, "created": time.time()}) + "\n")
    return run_id


# -------------------------------------------------------------------------------- step folders
def step_folders(root: Path) -> list[Path]:
    """step_* folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)), key=step_of)


def latest_folder(root: Path) -> Path | None:
    """The folder `root/latest` names, if it exists."""
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        return None
    return root / name if _TAG.match(name) and (root / name).is_dir() else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Folders with a COMPLETE marker, oldest first (no verification: see `verify`)."""
    return [p for p in step_folders(root) if (p / COMPLETE).is_file()]


def find_resume_checkpoint(run_dir: str | Path, run_id: str | None = None,
                           warn=log.warning) -> tuple[Path | None, list[str]]:
    """(the checkpoint `--resume auto` takes or None, what was skipped and why).

    `latest` is honoured: its checkpoint if it verifies, else the newest older one that does;
    folders newer than `latest` are never taken. With `run_id`, only that run's checkpoints.
    """
    root = Path(run_dir) / "checkpoints"
    folders = step_folders(root)
    latest = latest_folder(root)
    failed: list[str] = []
    if latest is not None:
        for path in folders:
            if step_of(path) > step_of(latest):
                if (path / COMPLETE).is_file():
                    warn("ignoring checkpoint %s: newer than %s=%s (cut off before %s was "
                         "updated, or left by a resume from an older checkpoint)",
                         path, LATEST, latest.name, LATEST)
                else:
                    warn("ignoring incomplete checkpoint %s (no %s marker: it was cut off "
                         "mid-write)", path, COMPLETE)
        folders = [p for p in folders if step_of(p) <= step_of(latest)]
    for path in reversed(folders):
        reason = verify(path)
        if reason is None and run_id is not None:
            other = (read_manifest(path) or {}).get("run_id")
            if other != run_id:
                reason = f"it belongs to run {other}, this folder to run {run_id}"
        if reason is None:
            if failed:
                warn("falling back to checkpoint %s", path)
            return path, failed
        if "cut off mid-write" in reason:
            warn("ignoring incomplete checkpoint %s (no %s marker: it was cut off mid-write)",
                 path, COMPLETE)
        else:
            warn("checkpoint %s does not verify (%s): trying an older one", path, reason)
        failed.append(f"{path.name}: {reason}")
    return None, failed
