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
written last, so a COMPLETE on disk means its files are on disk. The format itself (durable
writes, safe loads, the manifest, the folder layout and which checkpoint to take) lives in
megatron_ego/checkpoint_format/, which export and evaluation read too; this module writes and
loads checkpoints of a DeepSpeed engine.

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

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_ego.checkpoint_format.files import (  # noqa: F401  (re-exported: the API)
    CheckpointError,
    atomic_write_text,
    describe_write_error,
    durable_torch_save,
    fsync_dir,
    safe_load,
)
from megatron_ego.checkpoint_format.layout import (  # noqa: F401  (re-exported: the API)
    LATEST,
    RUN_FILE,
    complete_checkpoints,
    find_resume_checkpoint,
    latest_folder,
    read_run_id,
    step_folders,
    step_of,
    tag_for,
    write_run_id,
)
from megatron_ego.checkpoint_format.manifest import (  # noqa: F401  (re-exported: the API)
    CHECKSUM_MAX_BYTES,
    COMPLETE,
    mark_complete,
    read_manifest,
    verify,
)
from megatron_ego.runtime.processes import multi_rank
from megatron_ego.training.checkpoint_io import install_safe_checkpoint_engine  # noqa: F401
from megatron_ego.training.reshard import load_resharded

log = logging.getLogger(__name__)


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
    previous = latest_folder(root)
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


