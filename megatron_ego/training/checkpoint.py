"""Checkpoints that survive preemption: complete or ignored, never half-read.

Layout under `<run_dir>/checkpoints/`:

    step_0000100/                    one DeepSpeed tag: engine states (ZeRO-2 partitions per rank)
        mp_rank_00_model_states.pt   DeepSpeed (student weights)
        *_optim_states.pt            DeepSpeed (one fp32 partition of Adam states per rank)
        trainer_state.pt             teacher, DINO centers, step, data position, resolved config
        rng_rank00000.pt ...         every RNG state, one file per rank
        COMPLETE                     written by rank 0 after a barrier: every rank finished
    latest                           the newest complete tag, replaced atomically (os.replace)

Resume takes the newest folder that has COMPLETE; folders without it are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, run_dir: str, step: int, trainer_state: dict, rank: int,
                    keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the tag folder."""
    root = Path(run_dir) / "checkpoints"
    folder = root / tag_for(step)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # a stale, incomplete attempt at this step from a crashed run
            shutil.rmtree(folder)
    _barrier()
    engine.save_checkpoint(str(root), tag=tag_for(step), save_latest=False)
    _atomic_torch_save(rng_state(), folder / f"rng_rank{rank:05d}.pt")
    if rank == 0:
        _atomic_torch_save(trainer_state, folder / "trainer_state.pt")
    _barrier()  # every rank has written its part
    if rank == 0:
        world = dist.get_world_size() if dist.is_initialized() else 1
        _atomic_write_text(folder / COMPLETE, json.dumps(
            {"step": step, "world_size": world, "time": time.time()}))
        _atomic_write_text(root / LATEST, tag_for(step))
        prune(root, keep_last)
    _barrier()
    return folder


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete tag folders, oldest first; incomplete ones are warned about and skipped."""
    found = []
    for path in sorted(root.glob("step_*")):
        if not (path.is_dir() and _TAG.match(path.name)):
            continue
        if (path / COMPLETE).is_file():
            found.append(path)
        else:
            log.warning("ignoring incomplete checkpoint %s (no %s marker: it was cut off "
                        "mid-write)", path, COMPLETE)
    return found


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and incomplete older ones."""
    complete = complete_checkpoints(root)
    for path in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    if complete:
        newest = complete[-1].name
        for path in root.glob("step_*"):
            if path.name < newest and not (path / COMPLETE).exists():
                shutil.rmtree(path, ignore_errors=True)


def find_resume_checkpoint(run_dir: str) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def load_checkpoint(engine, folder: Path, rank: int) -> dict:
    """Restore the engine (weights, ZeRO partitions of the optimizer) and this rank's RNG state;
    return the trainer state (teacher, centers, step, data position, config)."""
    load_path, _ = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}")
    rng_file = folder / f"rng_rank{rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning("%s missing (resuming on more ranks than saved): RNG not restored", rng_file)
    return torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)
