"""Which checkpoint a run starts from (`--resume`), and which run a run folder belongs to.

- `auto`: the checkpoint `latest` names if it verifies against its COMPLETE manifest, else the
  newest older one of the same run that does (a warning names each that failed); nothing to
  resume -> a new run. Checkpoints exist but none verifies -> an error, never a silent restart.
- `none`: a new run; refused when the folder already holds checkpoints, unless `overwrite`
  (`--overwrite`), which deletes them with the run's metrics.
- a folder: it must verify; from another run folder only into an empty one (never two runs'
  checkpoints side by side).

The run id lives in `<run_dir>/RUN` and in every COMPLETE; `auto` only takes its own run's.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import torch.distributed as dist

from megatron_ego.config import ConfigError
from megatron_ego.runtime.processes import multi_rank
from megatron_ego.training import checkpoint as ckpt

log = logging.getLogger(__name__)

RUN_ARTEFACTS = ("checkpoints", "metrics.jsonl", "tensorboard", "PREEMPTED", ckpt.RUN_FILE)


def _newest(run_dir: Path) -> Path | None:
    """The newest folder with a COMPLETE marker (folders cut off mid-write hold nothing)."""
    folders = ckpt.complete_checkpoints(run_dir / "checkpoints")
    return folders[-1] if folders else None


def _clear(run_dir: Path) -> None:
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.warning("--overwrite: deleted the checkpoints and metrics of %s", run_dir)


def select_checkpoint(run_dir: str, resume: str, overwrite: bool = False
                      ) -> tuple[str | None, str]:
    """(checkpoint folder to load or None, run id of this run). Rank 0 only (it may delete).

    Raises:
        ConfigError: the choice would lose or mix checkpoints, or the named one does not verify.
    """
    folder = Path(run_dir)
    run_id = ckpt.read_run_id(folder)
    newest = _newest(folder)
    if resume == "none":
        if newest is not None and not overwrite:
            raise ConfigError(
                f"{folder} already holds checkpoints (newest {newest.name}) of run "
                f"{run_id or '(unknown)'}: use --resume auto to continue it, another run.name "
                "for a new run, or --overwrite to delete them and start over")
        if overwrite:
            _clear(folder)
        return None, uuid.uuid4().hex
    if resume == "auto":
        if newest is None:
            for path in ckpt.step_folders(folder / "checkpoints"):
                log.warning("ignoring incomplete checkpoint %s (no %s marker: it was cut off "
                            "mid-write)", path, ckpt.COMPLETE)
            log.info("no complete checkpoint under %s: starting from scratch", folder)
            return None, run_id or uuid.uuid4().hex
        found, failed = ckpt.find_resume_checkpoint(folder, run_id=run_id)
        if found is None:
            raise ConfigError(
                f"no checkpoint under {folder / 'checkpoints'} verifies ({'; '.join(failed)}): "
                "pass --resume DIR, or --resume none --overwrite to start this run over")
        return str(found), run_id or (ckpt.read_manifest(found) or {}).get("run_id") \
            or uuid.uuid4().hex
    target = Path(resume)
    if not target.is_dir():
        raise ConfigError(f"--resume {resume!r}: expected 'auto', 'none' or a checkpoint folder")
    reason = ckpt.verify(target)
    if reason is not None:
        raise ConfigError(f"--resume {target}: {reason}; pass a checkpoint that verifies, or "
                          "--resume auto to take the newest one that does")
    own = (folder / "checkpoints").resolve() == target.resolve().parent
    if own:
        saved = (ckpt.read_manifest(target) or {}).get("run_id")
        if newest is not None and ckpt.step_of(newest) > ckpt.step_of(target):
            log.warning("resuming %s from the older %s: the newer checkpoints of this folder "
                        "will be deleted when the next one is written", folder, target.name)
        return str(target), run_id or saved or uuid.uuid4().hex
    if newest is not None:
        raise ConfigError(
            f"--resume {target} is another run's checkpoint but {folder} already holds "
            f"checkpoints (newest {newest.name}): choose another run.name for the new run, or "
            "--overwrite to delete them")
    return str(target), uuid.uuid4().hex


def check_compatible(folder: Path, global_batch_size: int, micro_batch_size: int) -> None:
    """The data position carries over only with the same global and micro batch."""
    manifest = ckpt.read_manifest(folder) or {}
    for key, now in (("global_batch_size", global_batch_size),
                     ("micro_batch_size", micro_batch_size)):
        saved = manifest.get(key)
        if saved is not None and saved != now:
            raise ConfigError(
                f"checkpoint {folder} was written with run.{key}={saved}, this run has {now}: "
                f"resume with --run.{key}={saved} (a different world size is fine)")


def decide_resume(run_dir: str, resume: str, overwrite: bool, global_batch_size: int,
                  micro_batch_size: int, is_main: bool) -> tuple[Path | None, str]:
    """(checkpoint to resume from or None, run id): decided by rank 0, told to every rank
    (a shared file system may show the ranks different things mid-write). A collective.

    Raises:
        ConfigError: on every rank, when rank 0 refused the choice.
    """
    decision: list = [None]
    if is_main:
        try:
            folder, run_id = select_checkpoint(run_dir, resume, overwrite)
            if folder is not None:
                check_compatible(Path(folder), global_batch_size, micro_batch_size)
            decision[0] = (folder, run_id)
        except ConfigError as err:
            decision[0] = str(err)
    if multi_rank():
        dist.broadcast_object_list(decision, src=0)
    if isinstance(decision[0], str):
        raise ConfigError(decision[0])
    folder, run_id = decision[0]
    return (Path(folder) if folder else None), run_id


def data_position(micro_step: int, saved_world: int, world: int, global_batch_size: int,
                  micro_batch_size: int) -> int:
    """The loader position to resume at on `world` ranks, from `micro_step` micro-batches drawn
    on `saved_world` ranks: the data stream is a function of (optimizer step, slot in the global
    batch), so the position carries over to the next step's first micro-step on the new world."""
    if saved_world == world:
        return micro_step
    old_accum = global_batch_size // (micro_batch_size * saved_world)
    new_accum = global_batch_size // (micro_batch_size * world)
    steps_begun = -(-micro_step // old_accum)  # ceil
    return steps_begun * new_accum
