"""`run.init_from`: start a run from another run's weights (the second stage of the recipe).

    source = read_init_source("runs/stage1_300m")           # run, checkpoint or export folder
    loaded = load_shared(student, source.student, source)    # before deepspeed.initialize
    load_shared(teacher, source.teacher, source)

Only the tensors that a representation-only run (stage 1) and the joint run (stage 2) both train
are taken: the trunk, the image projector, the state query and the representation head. The
optimizer, the schedules, the step counter, the data position and the DINO centers start afresh,
and so do the modules stage 1 never trains (action projector and head, action and future-state
queries, state-prediction head; with `model.predict_head_init: represent` the latter starts as a
copy of the loaded representation head). It is not `--resume`: a run that already has a checkpoint
resumes from it and ignores `run.init_from`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from megatron_ego.config import Config, ConfigError, ModelConfig
from megatron_ego.config_io import to_dict
from megatron_ego.export.format import (
    STUDENT_FILE,
    WEIGHTS_FILE,
    ExportError,
    module_weights,
    read_export,
    read_student,
    to_module_names,
)

log = logging.getLogger(__name__)

SHARED_PREFIXES = ("backbone.", "image_projector.", "queries.state", "represent_head.")
"""Module names of the tensors both stages have: trunk, image projector, state query, head."""

# model fields that change what the shared tensors compute without changing their shapes
_SAME_BEHAVIOUR = ("norm_epsilon", "rotary_base", "frame_bidirectional", "patch_size",
                   "num_attention_heads")


@dataclass
class InitSource:
    """Weights of the run to start from."""

    path: str
    """What run.init_from named."""
    description: str
    """Which folder and files were read (for the log)."""
    model: ModelConfig
    """The source's model config."""
    student: dict[str, torch.Tensor]
    """Student weights (fp32 master weights for a checkpoint)."""
    teacher: dict[str, torch.Tensor]
    """EMA teacher weights."""


def read_init_source(path: str) -> InitSource:
    """A run folder (its newest complete checkpoint), a checkpoint folder or an export folder.

    Raises:
        ConfigError: the path holds none of these (one line, with what to pass).
    """
    from megatron_ego.export.checkpoint import checkpoint_networks, resolve_checkpoint

    folder = Path(path)
    try:
        if (folder / WEIGHTS_FILE).is_file():
            cfg, teacher, _ = read_export(folder)
            student = read_student(folder, cfg)
            where = f"export {folder} ({WEIGHTS_FILE}"
            where += f", {STUDENT_FILE})" if student else " for student and teacher)"
            return InitSource(path, where, cfg.model, student[0] if student else teacher, teacher)
        checkpoint = resolve_checkpoint(folder)
        cfg, networks = checkpoint_networks(checkpoint, ("teacher", "student"))
    except ExportError as err:
        raise ConfigError(f"run.init_from={path!r}: {err}") from err
    return InitSource(path, f"checkpoint {checkpoint}", cfg.model,
                      networks["student"][0], networks["teacher"][0])


def shared_names(module: nn.Module) -> list[str]:
    """Names of `module`'s state tensors that both stages have."""
    return [k for k, v in module.state_dict().items()
            if k.startswith(SHARED_PREFIXES) and torch.is_tensor(v)
            and not k.endswith("_extra_state")]


def check_model_config(current: ModelConfig, source: InitSource, partial: bool = False) -> None:
    """Stop when a model field that changes the shared tensors' meaning differs, or the trunk's
    layer count differs without `partial` (run.init_from_partial): one line."""
    here, there = to_dict(current), to_dict(source.model)
    if here["num_layers"] != there["num_layers"] and not partial:
        raise ConfigError(
            f"run.init_from={source.path!r}: the source's trunk has {there['num_layers']} layers, "
            f"this config {here['num_layers']}; only part of it would be loaded: set "
            f"--model.num_layers={there['num_layers']}, or --run.init_from_partial=true to load "
            "the layers both have and start the others afresh"
        )
    for key in _SAME_BEHAVIOUR:
        if here[key] != there[key]:
            raise ConfigError(
                f"run.init_from={source.path!r}: model.{key} is {here[key]!r} here but "
                f"{there[key]!r} in the source run; the trunk's tensors would not mean the same "
                f"(set --model.{key}={there[key]})"
            )


def load_shared(module: nn.Module, weights: dict[str, torch.Tensor], source: InitSource,
                network: str, partial: bool = False) -> list[str]:
    """Copy the shared tensors of `weights` into `module` (in its dtype); returns their names.
    With `partial` (run.init_from_partial), tensors that only one side has (the layers of a
    deeper trunk) are left out and logged instead of refused.

    Raises:
        ConfigError: a shared tensor is missing in the source, is in the source but not in the
            module, or has another shape (one line naming the tensor).
    """
    state = module.state_dict()
    names = shared_names(module)
    weights = to_module_names(module_weights(weights), state.keys())
    extra = sorted(k for k in weights if k.startswith(SHARED_PREFIXES) and k not in state
                   and not k.endswith("_extra_state"))
    missing = [name for name in names if name not in weights]
    if partial and (extra or missing):
        log.warning("run.init_from_partial: %s: %d source tensors not loaded (e.g. %s), %d "
                    "tensors start afresh (e.g. %s)", network, len(extra),
                    extra[0] if extra else "-", len(missing), missing[0] if missing else "-")
        names = [name for name in names if name in weights]
    elif extra:
        raise ConfigError(
            f"run.init_from={source.path!r}: the source's {network} tensor {extra[0]} (and "
            f"{len(extra) - 1} more) has no place in this model; set the source run's model "
            "section, or --run.init_from_partial=true to load what both have"
        )
    for name in names:
        if name not in weights:
            raise ConfigError(
                f"run.init_from={source.path!r}: {network} tensor {name} is missing from the "
                f"source ({source.description}); it was trained with another architecture "
                "(--run.init_from_partial=true loads what both have)"
            )
        if tuple(weights[name].shape) != tuple(state[name].shape):
            raise ConfigError(
                f"run.init_from={source.path!r}: {network} tensor {name} has shape "
                f"{tuple(weights[name].shape)} in the source but {tuple(state[name].shape)} in "
                "this config; use the source run's model section"
            )
    with torch.no_grad():
        for name in names:
            state[name].copy_(weights[name].to(device=state[name].device,
                                               dtype=state[name].dtype))
    # model.predict_head_init=represent: a copy of the loaded head, not of the random one
    module.init_predict_head()
    return names


def fresh_names(module: nn.Module) -> list[str]:
    """Top-level parts of `module` that init_from leaves at their initialisation."""
    parts = set()
    for name in module.state_dict():
        if name.endswith("_extra_state") or name.startswith(SHARED_PREFIXES):
            continue
        head = name.split(".")[0]
        parts.add(name.rsplit(".", 1)[0] if head == "queries" else head)
    return sorted(parts)


def summary_line(cfg: Config, source: InitSource, loaded: list[str], fresh: list[str]) -> str:
    """What the log says about an init_from start."""
    groups = sorted({n.split(".")[0] if not n.startswith("queries") else "queries.state"
                     for n in loaded})
    if cfg.model.predict_head_init == "represent":
        fresh = [f"{n} (a copy of the loaded represent_head)" if n == "predict_head" else n
                 for n in fresh]
    return (f"init_from {source.description}: loaded {len(loaded)} tensors ({', '.join(groups)}) "
            f"into student and teacher; initialised afresh: {', '.join(fresh)}, optimizer state, "
            f"lr / weight-decay / EMA / teacher-temperature schedules, step 0, DINO centers "
            f"(loss.center_init={cfg.loss.center_init})")
