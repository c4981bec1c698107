"""Loading a ZeRO-2 checkpoint on another number of data-parallel ranks.

DeepSpeed 0.19.8 refuses ZeRO-2 optimizer states saved by another world size (its universal
checkpoint needs `universal_checkpoint_info`, which only Megatron-DeepSpeed writes), so
`load_resharded` re-partitions the fp32 master weights and Adam moments itself, after DeepSpeed
has loaded the module weights (checkpoint.load_checkpoint).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_ego.checkpoint_format.files import CheckpointError, safe_load

log = logging.getLogger(__name__)


def _optim_files(folder: Path, world: int) -> list[Path]:
    files = []
    for r in range(world):
        matches = sorted(folder.glob(f"*zero_pp_rank_{r}_mp_rank_00_optim_states.pt"))
        if not matches:
            raise CheckpointError(f"{folder}: the ZeRO optimizer partition of rank {r} is missing")
        files.append(matches[0])
    return files


def load_resharded(engine, folder: Path, saved_world: int) -> None:
    """Set this rank's ZeRO-2 partition of the fp32 master weights and Adam moments from the
    `saved_world` partitions of `folder`.

    DeepSpeed's stage-2 layout (round-robin gradients off, no parameter alignment padding): per
    param group, the flat fp32 copy of the group's parameters is padded at its end to a multiple
    of the world size and cut into equal partitions, rank r holding [r n, (r + 1) n). The saved
    `single_partition_of_fp32_groups` have that padding removed; the Adam moments keep it.
    """
    opt = engine.optimizer
    rank = dist.get_rank() if dist.is_initialized() else 0
    saved = [safe_load(f)["optimizer_state_dict"] for f in _optim_files(folder, saved_world)]
    for i, current in enumerate(opt.single_partition_of_fp32_groups):
        expected = sum(p.numel() for p in opt.bit16_groups[i])
        n = current.numel()  # [n] this rank's partition (padding included)

        def gather(parts: list[torch.Tensor], i=i, expected=expected, n=n) -> torch.Tensor:
            flat = torch.cat([p.reshape(-1).float() for p in parts])  # [expected]
            if flat.numel() != expected:
                raise CheckpointError(
                    f"{folder}: param group {i} holds {flat.numel()} values, the model "
                    f"{expected}: the checkpoint is of another model or ZeRO layout")
            mine = flat[rank * n: (rank + 1) * n]
            return torch.cat([mine, mine.new_zeros(n - mine.numel())])  # [n]

        current.data.copy_(gather([sd["single_partition_of_fp32_groups"][i] for sd in saved]))
        states = []
        for sd in saved:
            base = sd["base_optimizer_state"]
            param_id = base["param_groups"][i]["params"][0]
            state = base["state"][param_id]
            pad = sd["group_paddings"][i]
            states.append({k: (v[: v.numel() - pad] if torch.is_tensor(v) and v.dim() == 1 else v)
                           for k, v in state.items()})
        target = opt.optimizer.state[current]
        for key in states[0]:
            value = states[0][key]
            if torch.is_tensor(value) and value.dim() == 1:
                merged = gather([s[key] for s in states]).to(current.device)
                if key in target:
                    target[key].copy_(merged)
                else:
                    target[key] = merged
            elif key in target and torch.is_tensor(target[key]) and torch.is_tensor(value):
                target[key].copy_(value)  # "step" (the same on every rank), where it lives
            elif torch.is_tensor(value):  # as torch's load_state_dict places it
                group = opt.optimizer.param_groups[i]
                on_device = group.get("fused") or group.get("capturable")
                target[key] = value.to(current.device if on_device else "cpu", torch.float32)
            else:
                target[key] = value
    first = saved[0]
    if "loss_scaler" in first:
        opt.loss_scaler = first["loss_scaler"]
        opt.dynamic_loss_scale = first.get("dynamic_loss_scale", opt.dynamic_loss_scale)
    log.info("re-partitioned the ZeRO-2 optimizer state of %s from %d to %d ranks",
             folder, saved_world, dist.get_world_size() if dist.is_initialized() else 1)
