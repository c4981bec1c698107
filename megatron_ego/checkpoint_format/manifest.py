"""The `COMPLETE` manifest of a checkpoint folder: written last, it lists every file of the
checkpoint with its size (and a crc32 up to CHECKSUM_MAX_BYTES) next to the run's facts (step,
world size, batch sizes, run id); a folder is used only when its files match it.

    mark_complete(folder, {"step": 100, "world_size": 8, "run_id": run_id})
    reason = verify(folder)           # None, or what is wrong in one phrase
    manifest = read_manifest(folder)  # the json, or None
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

from megatron_ego.checkpoint_format.files import atomic_write_text, fsync_dir

COMPLETE = "COMPLETE"
MANIFEST_FORMAT = 2
CHECKSUM_MAX_BYTES = 256 << 20
"""Files up to this size get a crc32 in COMPLETE (reading them back costs < 1 s); bigger ones
(the optimizer partitions and module states of a large model) are checked by size only."""


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _manifest_files(folder: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == COMPLETE or path.name.endswith(".tmp"):
            continue
        size = path.stat().st_size
        entry: dict = {"size": size}
        if size <= CHECKSUM_MAX_BYTES:
            entry["crc32"] = _crc32(path)
        files[path.name] = entry
    return files


def mark_complete(folder: Path, meta: dict) -> dict:
    """Write COMPLETE: `meta` plus every file of `folder` with its size (and crc32), after an
    fsync of the folder (the files were fsynced by their writers). Returns the manifest."""
    fsync_dir(folder)
    manifest = {"format": MANIFEST_FORMAT, "time": time.time(), **meta,
                "files": _manifest_files(folder)}
    atomic_write_text(folder / COMPLETE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def verify(folder: Path) -> str | None:
    """None when `folder` is a complete checkpoint whose files match its COMPLETE manifest;
    otherwise what is wrong (one phrase)."""
    if not (folder / COMPLETE).is_file():
        return f"no {COMPLETE} marker (cut off mid-write)"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{COMPLETE} is not readable json"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{COMPLETE} lists no files (written by an older megatron-ego): cannot verify it"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size} bytes, {COMPLETE} says {entry.get('size')}"
        if "crc32" in entry and _crc32(path) != entry["crc32"]:
            return f"{name} does not match its crc32 in {COMPLETE} (corrupted)"
    return None
