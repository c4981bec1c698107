"""How checkpoint files reach the disk and come back: durable writes (fsynced, renamed into
place, a full disk named as such) and safe loads (`torch.load(weights_only=True)` only; DeepSpeed's
own files go through the same load: training/checkpoint_io.py `install_safe_checkpoint_engine`).

    durable_torch_save(state, folder / "trainer_state.pt")
    state = safe_load(folder / "trainer_state.pt")   # CheckpointError if it holds code
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message is one line saying what to do."""


# ------------------------------------------------------------------------------ durable writes
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` so that a crash leaves the old content or the new, never a part (fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def durable_torch_save(obj, path: Path, zipfile: bool = True) -> None:
    """torch.save through a Python file (so a full disk raises OSError ENOSPC, not torch's
    'iostream error'), fsynced and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f, _use_new_zipfile_serialization=zipfile)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_disk_full(err: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain (torch wraps it in a RuntimeError)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def describe_write_error(err: BaseException, path: Path | str) -> str:
    if is_disk_full(err):
        return f"No space left on device while writing {path}"
    return f"{type(err).__name__} while writing {path}: {str(err).splitlines()[0] if str(err) else ''}"


# ---------------------------------------------------------------------------------- safe loads
def _deepspeed_globals() -> list:
    """The classes DeepSpeed 0.19.8 pickles into its ZeRO optimizer files (nothing executable)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: Path | str, map_location="cpu"):
    """torch.load with weights_only=True (tensors, containers, numbers, strings and DeepSpeed's
    allow-listed state classes); anything else is refused with a CheckpointError."""
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} holds objects other than tensors and numbers ({first}); refusing to "
            "unpickle it: it was not written by megatron-ego, or was tampered with") from err
