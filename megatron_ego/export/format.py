"""The exported-model format: ``DIR/model.safetensors`` + ``DIR/config.yaml``. Nothing is unpickled.

- ``model.safetensors``: every parameter and floating buffer of one ``EgoAgent`` module (fp32),
  named as in ``EgoAgent.state_dict()`` with megatron's ``*._extra_state`` entries left out and the
  trunk's norms named as in megatron-core's *local* layer spec (``input_layernorm.weight``,
  ``pre_mlp_layernorm.weight``). A Transformer Engine spec fuses those norms into the next linear
  (``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``); ``to_module_names`` maps
  either naming onto the module being loaded, so a model trained with TE loads on a CPU and back.
  The header's metadata holds ``format`` (``megatron-ego/1``), ``weights`` (teacher | student),
  ``step``, ``source`` (how the weights were read) and ``model_config`` (the model section as
  YAML, to catch a config.yaml edited or copied from another export).
- ``config.yaml``: the resolved run config (``megatron_ego.config.save_config``), read with the
  strict loader, so unknown keys or wrong types are errors.

- ``student.safetensors`` (optional, ``--weights agent``): the student's weights in the same
  format. The paper's teacher is the feature branch, the student the network that predicts and
  acts: with this file, ``EgoAgent.from_pretrained`` represents with ``model.safetensors`` (the
  EMA teacher) and predicts and acts with the student (docs/results.md measures both).

Every file is written to a temporary name in ``DIR`` and renamed into place; an export without a
student removes a stale ``student.safetensors`` so two exports are never mixed.

    write_export(weights, cfg, "runs/x/export", {"weights": "teacher", "step": "1000"})
    cfg, weights, meta = read_export("runs/x/export")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import yaml

from megatron_ego.config import Config, ConfigError, load_config, save_config
from megatron_ego.config_io import to_dict

FORMAT = "megatron-ego/1"
WEIGHTS_FILE = "model.safetensors"
STUDENT_FILE = "student.safetensors"
CONFIG_FILE = "config.yaml"

# (local spec suffix, Transformer Engine spec suffix) of the same trunk parameter
_NORM_NAMES = (
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    ("input_layernorm.bias", "self_attention.linear_qkv.layer_norm_bias"),
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    ("pre_mlp_layernorm.bias", "mlp.linear_fc1.layer_norm_bias"),
)


class ExportError(ValueError):
    """An export folder is missing, incomplete, or does not match its config; says what to do."""


def module_weights(state: dict) -> dict[str, torch.Tensor]:
    """Tensors of a state dict, megatron's ``_extra_state`` entries (None or bytes) left out."""
    return {k: v for k, v in state.items()
            if torch.is_tensor(v) and not k.endswith("_extra_state")}


def _rename(name: str, source: int, target: int) -> str:
    for names in _NORM_NAMES:
        if name.endswith("." + names[source]):
            return name[: -len(names[source])] + names[target]
    return name


def to_local_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transformer Engine trunk names -> megatron-core local spec names (the export's naming)."""
    return {_rename(k, 1, 0): v for k, v in weights.items()}


def to_module_names(weights: dict[str, torch.Tensor], module_keys) -> dict[str, torch.Tensor]:
    """Rename exported weights to the naming of the module being loaded (local or TE)."""
    module_keys = set(module_keys)
    if set(weights) == module_keys:
        return weights
    local = to_local_names(weights)
    renamed = {(_rename(k, 0, 1) if k not in module_keys else k): v for k, v in local.items()}
    return renamed


def _model_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg.model), sort_keys=True)


def _tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module weights -> the stored tensors (local-spec names, floats as fp32, on CPU)."""
    tensors = {}
    for name, value in to_local_names(module_weights(weights)).items():
        value = value.detach().to("cpu")
        tensors[name] = (value.float() if value.is_floating_point() else value).contiguous().clone()
    return tensors


def write_export(
    weights: dict[str, torch.Tensor], cfg: Config, out_dir: str | Path, metadata: dict[str, str],
    student: dict[str, torch.Tensor] | None = None,
    student_metadata: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/model.safetensors``, ``out_dir/config.yaml`` and, given ``student``,
    ``out_dir/student.safetensors`` (each atomically; without ``student`` an old one is removed).

    Args:
        weights: name -> tensor (``_extra_state`` entries are dropped, floats stored as fp32).
        cfg: the resolved config the weights belong to.
        metadata: extra string fields for the safetensors header (weights, step, source).
        student, student_metadata: the student's weights and header fields, same rules.
    Returns:
        (weights path, config path).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_yaml = _model_yaml(cfg)
    files = [(WEIGHTS_FILE, _tensors(weights), metadata)]
    if student is not None:
        files.append((STUDENT_FILE, _tensors(student), student_metadata or {}))
    weights_path, config_path = out_dir / WEIGHTS_FILE, out_dir / CONFIG_FILE
    handle, tmp_config = tempfile.mkstemp(dir=out_dir, prefix=f".{CONFIG_FILE}.", suffix=".tmp")
    os.close(handle)
    written = {}  # final name -> temporary file
    try:
        for name, tensors, fields in files:
            handle, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(handle)
            written[name] = tmp
            header = {**{k: str(v) for k, v in fields.items()}, "format": FORMAT,
                      "model_config": model_yaml}
            save_file(tensors, tmp, metadata=header)
        save_config(cfg, tmp_config)  # itself writes a .tmp and renames
        written[CONFIG_FILE] = tmp_config
        for tmp in written.values():
            with open(tmp, "rb") as stream:
                os.fsync(stream.fileno())
            os.chmod(tmp, 0o644)
        if student is None:
            (out_dir / STUDENT_FILE).unlink(missing_ok=True)
        for name, tmp in written.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in [*written.values(), tmp_config]:
            Path(tmp).unlink(missing_ok=True)
    return weights_path, config_path


def read_export(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Config, dict[str, torch.Tensor], dict[str, str]]:
    """Read an export: (config, weights on ``device``, header metadata). No pickle is involved.

    Raises:
        ExportError: the folder or one of its files is missing, the file is not a megatron-ego
            export, or config.yaml's model section differs from the one the weights were saved with.
    """
    model_dir = Path(model_dir)
    weights_path, config_path = model_dir / WEIGHTS_FILE, model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise ExportError(
            f"model folder {model_dir} does not exist: export a checkpoint first with "
            f"`python launch/export.py --checkpoint RUN_DIR --out {model_dir}`"
        )
    for path in (weights_path, config_path):
        if not path.is_file():
            raise ExportError(
                f"{path} is missing: {model_dir} is not a complete export; re-run "
                f"`python launch/export.py --checkpoint RUN_DIR --out {model_dir}`"
            )
    try:
        cfg = load_config(str(config_path))
    except ConfigError as err:
        raise ExportError(f"{config_path}: {err}") from err
    weights, metadata = _read_weights(weights_path, cfg, config_path, device)
    return cfg, weights, metadata


def read_student(
    model_dir: str | Path, cfg: Config, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``model_dir/student.safetensors`` as (weights, metadata), or None when the export has none.

    Raises:
        ExportError: the file is unreadable, not a megatron-ego export, or of another model.
    """
    path = Path(model_dir) / STUDENT_FILE
    if not path.is_file():
        return None
    return _read_weights(path, cfg, Path(model_dir) / CONFIG_FILE, device)


def _read_weights(weights_path: Path, cfg: Config, config_path: Path,
                  device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        weights = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{weights_path} is not a readable safetensors file ({err}): "
                          "re-export the checkpoint") from err
    if metadata.get("format") != FORMAT:
        raise ExportError(
            f"{weights_path} is not a megatron-ego export (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}): write it with launch/export.py"
        )
    saved = yaml.safe_load(metadata.get("model_config", "{}")) or {}
    current = to_dict(cfg.model)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in _LOADER_ONLY and saved.get(k) != current.get(k))
    if changed:
        key = changed[0]
        raise ExportError(
            f"{config_path} does not belong to {weights_path}: model.{key} is "
            f"{current.get(key)!r} in the YAML but the weights were exported with "
            f"{saved.get(key)!r}; use the config.yaml written with these weights"
        )
    return weights, metadata


# model fields that choose how the network runs, not what it is: free to differ at load time
_LOADER_ONLY = frozenset({"transformer_impl", "recompute", "fp8"})
