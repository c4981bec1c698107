"""The DeepSpeed JSON (configs/zero2.json) checked against the YAML run config.

Batch sizes, precision and gradient clipping live in both files. A JSON value of "auto" is filled
from the YAML; an explicit value must agree with it, or start-up stops with a one-line error that
names both keys. The JSON keeps what only DeepSpeed knows: ZeRO stage, buckets, loss scaling.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from megatron_ego.config import Config, ConfigError

SUPPORTED_ZERO_STAGE = 2
"""ZeRO-3 would partition the weights themselves, which the EMA update and the checkpoint
export read whole; stages 0 and 1 would silently replicate what the configs size for ZeRO-2."""


def _agree(ds: dict, key: str, value: Any, yaml_key: str, path: str) -> None:
    """Fill ds[key] when "auto"/absent; otherwise it must equal `value`."""
    current = ds.get(key, "auto")
    if current == "auto":
        ds[key] = value
    elif current != value:
        raise ConfigError(
            f"{os.path.basename(path)} {key}={current} disagrees with {yaml_key}={value}; "
            f'make them equal or set {key} to "auto" in the JSON'
        )


def load_ds_config(path: str, cfg: Config, world_size: int) -> dict[str, Any]:
    """Read the DeepSpeed JSON, fill "auto" values from `cfg`, and check the rest agrees."""
    if not os.path.isfile(path):
        raise ConfigError(f"--ds_config {path!r} does not exist (use configs/zero2.json)")
    try:
        with open(path) as f:
            ds = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds_config {path!r} is not valid JSON: {e}") from e
    if not isinstance(ds, dict):
        raise ConfigError(
            f"--ds_config {path!r} holds a JSON {type(ds).__name__}, not an object of DeepSpeed "
            "settings: start from configs/zero2.json")
    ds = copy.deepcopy(ds)
    run = cfg.run
    per_step = run.micro_batch_size * world_size
    if run.global_batch_size % per_step:
        raise ConfigError(
            f"run.global_batch_size={run.global_batch_size} is not a multiple of "
            f"run.micro_batch_size x world size = {run.micro_batch_size} x {world_size}"
        )
    _agree(ds, "train_batch_size", run.global_batch_size, "run.global_batch_size", path)
    _agree(ds, "train_micro_batch_size_per_gpu", run.micro_batch_size, "run.micro_batch_size",
           path)
    _agree(ds, "gradient_accumulation_steps", run.global_batch_size // per_step,
           "run.global_batch_size / (run.micro_batch_size x world size)", path)
    _agree(ds, "gradient_clipping", cfg.optim.grad_clip, "optim.grad_clip", path)
    for name in ("bf16", "fp16"):
        block = ds.setdefault(name, {})
        current, wanted = block.get("enabled", "auto"), run.precision == name
        if current == "auto":
            block["enabled"] = wanted
        elif bool(current) != wanted:
            raise ConfigError(
                f"{os.path.basename(path)} {name}.enabled={current} disagrees with "
                f'run.precision={run.precision!r}; make them agree or set it to "auto"'
            )
    if ds["bf16"].get("check_grad_overflow", True) is not True:
        raise ConfigError(
            f"{os.path.basename(path)} bf16.check_grad_overflow must stay true: it is how "
            "DeepSpeed skips a step with inf/nan gradients, which the trainer counts to stop a "
            "diverging run (optim.max_skipped_steps)")
    zero = ds.setdefault("zero_optimization", {})
    if not isinstance(zero, dict) or zero.get("stage", SUPPORTED_ZERO_STAGE) != SUPPORTED_ZERO_STAGE:
        stage = zero.get("stage") if isinstance(zero, dict) else zero
        raise ConfigError(
            f"{os.path.basename(path)} zero_optimization.stage={stage!r}: this trainer supports "
            f"ZeRO stage {SUPPORTED_ZERO_STAGE} only (its EMA teacher reads the student's full "
            f"weights on every rank); set \"stage\": {SUPPORTED_ZERO_STAGE}")
    zero["stage"] = SUPPORTED_ZERO_STAGE
    if zero.get("overlap_comm", "auto") == "auto":
        # Overlapping gradient reduction with backward pays off with CUDA streams. On CPU the
        # streams are no-ops and the overlap only makes the reduction order (and so the last
        # bits of every step) vary from run to run, which breaks exact resume.
        import torch

        zero["overlap_comm"] = torch.cuda.is_available()
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            f"{os.path.basename(path)} must not define 'optimizer' or 'scheduler': the trainer builds "
            "AdamW with its parameter groups and per-step lr/wd schedules from the YAML (optim.*)"
        )
    return ds
