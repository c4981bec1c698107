"""Read the weights of a training checkpoint (the only DeepSpeed-aware part of evaluation).

A checkpoint folder ``<run_dir>/checkpoints/step_NNNNNNN/`` (checkpoint_format/) holds the
student as DeepSpeed files and ``trainer_state.pt`` (teacher state dict, resolved config, ...):

- teacher: ``trainer_state.pt["teacher"]``, the full fp32 EMA teacher (what DINO-style methods
  evaluate; the default);
- student: fp32 master weights consolidated from the ZeRO-2 optimizer partitions with
  ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` (run only on a
  checkpoint that verified against its COMPLETE manifest, and whose files unpickle with
  ``weights_only=True``: that function itself unpickles without restriction); if that fails the
  module states file ``mp_rank_00_model_states.pt`` is used (the training precision's weights,
  bf16 on GPUs) and the returned source says so.

    folder = resolve_checkpoint("runs/egoagent_300m")      # newest complete checkpoint
    cfg, networks = checkpoint_networks(folder, ("teacher", "student"))  # one read of the state
    weights, source = networks["teacher"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_ego.checkpoint_format.files import CheckpointError, safe_load
from megatron_ego.checkpoint_format.layout import find_resume_checkpoint
from megatron_ego.checkpoint_format.manifest import COMPLETE, verify
from megatron_ego.config import Config, ConfigError
from megatron_ego.config_io import from_dict
from megatron_ego.export.format import ExportError, module_weights

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
MODEL_STATES = "mp_rank_00_model_states.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its ``checkpoints/`` folder, or one ``step_*`` folder -> a complete tag folder.

    Raises:
        ExportError: the path does not exist, holds no complete checkpoint, or names an incomplete one.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(
            f"--checkpoint {path} does not exist: pass a training run directory (holding "
            "checkpoints/) or one of its checkpoints/step_* folders"
        )
    if (path / TRAINER_STATE).is_file() or path.name.startswith("step_"):
        reason = verify(path)
        if reason is not None:
            raise ExportError(
                f"checkpoint {path} does not verify ({reason}): pass the run directory to take "
                "its newest checkpoint that does"
            )
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    found, failed = find_resume_checkpoint(run_dir)
    if found is None:
        why = f" ({'; '.join(failed)})" if failed else ""
        raise ExportError(
            f"no complete checkpoint under {path} that verifies{why}: train first (launch/pretrain.py writes "
            f"{run_dir}/checkpoints/step_*/ with a {COMPLETE} manifest)"
        )
    return found


def _trainer_state(folder: Path) -> dict:
    file = folder / TRAINER_STATE
    if not file.is_file():
        raise ExportError(f"{file} is missing: {folder} is not a megatron-ego training checkpoint")
    try:  # plain dicts, tensors and numbers: anything else is refused, never run
        return safe_load(file)
    except CheckpointError as err:
        raise ExportError(str(err)) from err


def _config(state: dict, folder: Path) -> Config:
    try:
        return from_dict(Config, state["config"])
    except (KeyError, ConfigError) as err:
        raise ExportError(f"{folder / TRAINER_STATE} holds no valid resolved config: {err}") from err


def student_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(fp32 student weights, source description) of one checkpoint folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for file in sorted(folder.glob("*_states.pt")):  # what zero_to_fp32 will unpickle
        try:
            safe_load(file)  # refuses executable content before DeepSpeed's unrestricted load
        except CheckpointError as err:
            raise ExportError(str(err)) from err
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
        return module_weights(state), "zero_to_fp32 (fp32 master weights from the ZeRO partitions)"
    except Exception as err:  # any failure falls back to the module states, and is reported
        log.warning("consolidating the ZeRO partitions of %s failed (%s: %s); falling back to "
                    "%s (the weights in the training precision)", folder, type(err).__name__,
                    err, MODEL_STATES)
        file = folder / MODEL_STATES
        if not file.is_file():
            raise ExportError(f"{folder}: ZeRO consolidation failed ({err}) and {MODEL_STATES} "
                              "is missing") from err
        try:
            module = safe_load(file)["module"]
        except CheckpointError as err2:
            raise ExportError(str(err2)) from err2
        return module_weights(module), f"{MODEL_STATES} (fallback: zero_to_fp32 failed: {err})"


def checkpoint_networks(folder: Path, which: tuple[str, ...]
                        ) -> tuple[Config, dict[str, tuple[dict[str, torch.Tensor], str]]]:
    """(resolved config, {name: (weights, source description)}) for each name in ``which``
    (teacher, student), reading ``trainer_state.pt`` once."""
    unknown = [name for name in which if name not in ("teacher", "student")]
    if unknown:
        raise ExportError(f"--weights must be 'teacher' or 'student'; got {unknown[0]!r}")
    state = _trainer_state(folder)
    cfg = _config(state, folder)
    networks = {}
    if "teacher" in which:
        networks["teacher"] = (module_weights(state["teacher"]),
                               f"{TRAINER_STATE}['teacher'] (fp32 EMA)")
    del state  # free it before consolidating the student (the teacher's tensors are kept)
    if "student" in which:
        networks["student"] = student_weights(folder)
    return cfg, networks
