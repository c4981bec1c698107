"""Checkpoints that survive preemption, power loss and a full disk: verified or ignored, never
half-read, never unpickled into code, loadable on another number of data-parallel ranks.

Layout of a run folder:

    RUN                              the run id of the checkpoints below (json), written at start
    checkpoints/
        step_0000100/                one DeepSpeed tag: engine states (ZeRO-2 partitions per rank)
            mp_rank_00_model_states.pt   DeepSpeed (student weights, engine counters)
            *_optim_states.pt            DeepSpeed (one fp32 partition of Adam states per rank)
            trainer_state.pt             teacher, DINO centers, step, data position, config
            rng_rank00000.pt ...         every RNG state (tensors), one file per rank
            COMPLETE                     the manifest (json): step, world size, batch sizes, run
                                         id, and every file with its size (and crc32 up to
                                         CHECKSUM_MAX_BYTES), written by rank 0 after every
                                         rank fsynced its files
        latest                       the newest complete tag, replaced atomically after COMPLETE

Every file goes to `<name>.tmp`, is fsynced and renamed, and the folder is fsynced; COMPLETE is
written last, so a COMPLETE on disk means its files are on disk.

Resume (`select_checkpoint`): `auto` takes the checkpoint `latest` names if it verifies against
its COMPLETE, else the newest older one that does, with a warning naming what failed; folders
newer than `latest` (cut off before `latest` was updated, or an abandoned timeline) are ignored;
checkpoints of another run id are never taken. An explicit folder that does not verify is an
error. Loading goes through `torch.load(weights_only=True)` only (DeepSpeed's files included:
its checkpoint engine is replaced by `install_safe_checkpoint_engine`).

Another world size: DeepSpeed 0.19.8 refuses ZeRO-2 optimizer states saved by another number
of ranks (its universal checkpoint needs `universal_checkpoint_info`, which only
Megatron-DeepSpeed writes), so `load_checkpoint` loads the module through DeepSpeed and
re-partitions the fp32 master weights and Adam moments itself (training/reshard.py).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_ego.runtime.processes import multi_rank
from megatron_ego.training.checkpoint_io import (  # noqa: F401  (re-exported: the checkpoint API)
    CheckpointError,
    atomic_write_text,
    describe_write_error,
    durable_torch_save,
    fsync_dir,
    install_safe_checkpoint_engine,
    safe_load,
)
from megatron_ego.training.reshard import load_resharded

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
RUN_FILE = "RUN"
MANIFEST_FORMAT = 2
CHECKSUM_MAX_BYTES = 256 << 20
"""Files up to this size get a crc32 in COMPLETE (reading them back costs < 1 s); bigger ones
(the optimizer partitions and module states of a large model) are checked by size only."""
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def step_of(folder: Path) -> int:
    match = _TAG.match(folder.name)
    return int(match.group(1)) if match else -1


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather(obj) -> list:
    """Every rank's `obj` on every rank (a collective)."""
    if not multi_rank():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every RNG state as tensors and numbers (loadable with weights_only=True)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": (version, torch.tensor(words, dtype=torch.int64), gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------- manifest
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


def step_folders(root: Path) -> list[Path]:
    """step_* folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)), key=step_of)


def _latest(root: Path) -> Path | None:
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
    latest = _latest(root)
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


# ------------------------------------------------------------------------------------- saving
def prune(root: Path, keep_last: int, newest: Path) -> None:
    """Keep the `keep_last` newest complete checkpoints up to `newest` (just written); delete
    older incomplete folders and every folder newer than `newest` (a timeline abandoned by a
    resume from an older checkpoint, or a stale attempt)."""
    folders = step_folders(root)
    upto = [p for p in folders if step_of(p) <= step_of(newest)]
    complete = [p for p in upto if (p / COMPLETE).is_file()]
    doomed = complete[:-keep_last] if keep_last > 0 else []
    doomed += [p for p in upto if p not in complete and p != newest]
    newer = [p for p in folders if step_of(p) > step_of(newest)]
    if newer:
        log.warning("deleting %s: newer than the checkpoint just written (%s), from an "
                    "abandoned timeline", ", ".join(p.name for p in newer), newest.name)
    for path in doomed + newer:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(engine, run_dir: str, step: int, trainer_state: dict, rank: int,
                    keep_last: int, meta: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns the tag folder.

    Raises:
        CheckpointError: a rank could not write its part (e.g. "No space left on device while
            writing PATH"): nothing was marked complete, the folder was removed, `latest` and
            the previous checkpoints are untouched.
    """
    root = Path(run_dir) / "checkpoints"
    folder = root / tag_for(step)
    previous = _latest(root)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # a stale, incomplete attempt at this step from a crashed run
            shutil.rmtree(folder)
    _barrier()
    io = engine.checkpoint_engine
    errors = getattr(io, "errors", None)
    if errors is not None:
        errors.clear()
    error = None
    try:
        engine.save_checkpoint(str(root), tag=tag_for(step), save_latest=False)
    except Exception as err:  # noqa: BLE001  (decided collectively below)
        error = describe_write_error(err, folder)
    if error is None and errors:
        error = errors[0]
    if error is None:
        target = folder / f"rng_rank{rank:05d}.pt"
        try:
            durable_torch_save(rng_state(), target)
            if rank == 0:
                target = folder / "trainer_state.pt"
                durable_torch_save(trainer_state, target)
        except Exception as err:  # noqa: BLE001
            error = describe_write_error(err, target)
    _raise_if_any(_gather(error), rank, folder, previous)
    if rank == 0:
        try:
            mark_complete(folder, {"step": step, "world_size": _world(), **(meta or {})})
            atomic_write_text(root / LATEST, tag_for(step))
        except Exception as err:  # noqa: BLE001
            error = describe_write_error(err, folder / COMPLETE)
            (folder / COMPLETE).unlink(missing_ok=True)
    _raise_if_any(_gather(error), rank, folder, previous)
    if rank == 0:
        prune(root, keep_last, folder)
    _barrier()
    return folder


def _raise_if_any(errors: list, rank: int, folder: Path, previous: Path | None) -> None:
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if not failed:
        return
    _barrier()  # every rank knows; rank 0 removes the partial folder
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    _barrier()
    where, message = failed[0]
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
    raise CheckpointError(
        f"{message} (rank {where}): checkpoint {folder.name} was not marked complete and was "
        f"removed; {kept}. Free space under {folder.parent} and resume with --resume auto")


# ------------------------------------------------------------------------------------ loading
def load_checkpoint(engine, folder: Path, rank: int) -> dict:
    """Restore the engine (weights, ZeRO partitions of the optimizer, re-partitioned when the
    checkpoint was written by another number of ranks) and this rank's RNG state; return the
    trainer state (teacher, centers, step, data position, config)."""
    manifest = read_manifest(folder) or {}
    saved_world = int(manifest.get("world_size", _world()))
    reshard = saved_world != _world()
    load_path, _ = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=not reshard,
        load_lr_scheduler_states=False,
    )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {folder}")
    if reshard:
        load_resharded(engine, folder, saved_world)
    rng_file = folder / f"rng_rank{rank:05d}.pt"
    if rng_file.is_file() and not reshard:
        set_rng_state(safe_load(rng_file))
    return safe_load(folder / "trainer_state.pt")


