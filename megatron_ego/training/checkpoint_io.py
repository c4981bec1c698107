"""DeepSpeed's checkpoint engine made safe: its loads go through `safe_load` and its saves
through `durable_torch_save` (megatron_ego/checkpoint_format/files.py), recording a failure
instead of raising it so that the ranks decide together (training/checkpoint.py).

    install_safe_checkpoint_engine(engine)   # right after deepspeed.initialize
"""

from __future__ import annotations

from pathlib import Path

from megatron_ego.checkpoint_format.files import (
    describe_write_error,
    durable_torch_save,
    safe_load,
)


def _safe_checkpoint_engine_class():
    """DeepSpeed's torch checkpoint engine with safe loads and durable, error-recording saves
    (built on first use: importing DeepSpeed costs seconds)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """A failed save is recorded in `errors` instead of raised, so that every rank reaches
        the collective in `save_checkpoint` that decides, together, that the checkpoint failed."""

        def __init__(self, config_params=None):
            super().__init__(config_params)
            self.errors: list[str] = []

        def save(self, state_dict, path: str):
            try:
                durable_torch_save(state_dict, Path(path), zipfile=self.zipfile_serialization)
            except Exception as err:  # noqa: BLE001  (raised collectively by the caller)
                self.errors.append(describe_write_error(err, path))

        def load(self, path: str, map_location=None):
            return safe_load(path, map_location=map_location)

    return SafeCheckpointEngine


def install_safe_checkpoint_engine(engine) -> None:
    """Replace the engine's checkpoint engine (DeepSpeed's own unpickles everything)."""
    engine.checkpoint_engine = _safe_checkpoint_engine_class()(engine._config)
