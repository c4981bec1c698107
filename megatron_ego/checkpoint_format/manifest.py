"""The `COMPLETE` manifest of a checkpoint folder: written last, it lists every file of the
checkpoint with its size and crc32, whatever its size, next to the run's facts (step, world
size, batch sizes, run id); a folder is used only when every file matches it.

The crc32 of a file written by `durable_torch_save` is computed while writing (the writers pass
them in `checksums`); any other file is read back once. `verify` reads every file (several
threads: zlib releases the GIL) and compares. Cost at 300M parameters: docs/benchmarks.md
("Checkpoint checksums"). Manifests of format 2 (crc32 only up to 256 MiB) are still verified,
their large files by size.

    mark_complete(folder, {"step": 100, "world_size": 8, "run_id": run_id}, checksums)
    reason = verify(folder)           # None, or what is wrong in one phrase
    manifest = read_manifest(folder)  # the json, or None
"""

from __future__ import annotations

import json
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_ego.checkpoint_format.files import atomic_write_text, fsync_dir

COMPLETE = "COMPLETE"
MANIFEST_FORMAT = 3
"""3: a crc32 for every file (2: only for files up to 256 MiB, larger ones by size)."""
CHUNK = 1 << 22


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _manifest_files(folder: Path, checksums: dict[str, int]) -> dict[str, dict]:
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == COMPLETE or path.name.endswith(".tmp"):
            continue
        crc = checksums.get(path.name)
        files[path.name] = {"size": path.stat().st_size,
                            "crc32": crc if crc is not None else file_crc32(path)}
    return files


def mark_complete(folder: Path, meta: dict, checksums: dict[str, int] | None = None) -> dict:
    """Write COMPLETE: `meta` plus every file of `folder` with its size and crc32 (from
    `checksums`, {file name: crc32 computed while writing}, else read back), after an fsync of
    the folder (the files were fsynced by their writers). Returns the manifest."""
    fsync_dir(folder)
    manifest = {"format": MANIFEST_FORMAT, "time": time.time(), **meta,
                "files": _manifest_files(folder, checksums or {})}
    atomic_write_text(folder / COMPLETE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _check_file(folder: Path, name: str, entry, checksummed: bool) -> str | None:
    path = folder / name
    if not isinstance(entry, dict):
        return f"{COMPLETE} has no size for {name}"
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != entry.get("size"):
        return f"{name} has {size} bytes, {COMPLETE} says {entry.get('size')}"
    if "crc32" in entry:
        if file_crc32(path) != entry["crc32"]:
            return f"{name} does not match its crc32 in {COMPLETE} (corrupted)"
    elif checksummed:
        return f"{COMPLETE} has no crc32 for {name}"
    return None


def verify(folder: Path, threads: int | None = None) -> str | None:
    """None when `folder` is a complete checkpoint whose files match its COMPLETE manifest
    (size and crc32 of every file); otherwise what is wrong (one phrase, the first file that
    fails in name order)."""
    if not (folder / COMPLETE).is_file():
        return f"no {COMPLETE} marker (cut off mid-write)"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{COMPLETE} is not readable json"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{COMPLETE} lists no files (written by an older megatron-ego): cannot verify it"
    checksummed = int(manifest.get("format", 0)) >= 3
    threads = threads or min(8, os.cpu_count() or 1)
    names = sorted(files)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = pool.map(lambda n: _check_file(folder, n, files[n], checksummed), names)
        return next((reason for reason in reasons if reason is not None), None)
