"""AdamW with DINO's parameter groups, and the per-step lr / weight-decay application.

Groups: `decay` (weights with >= 2 dims), `no_decay` (biases, norms, query tokens: 1-dim), and
`prototypes` (the DINO heads' last layers: decayed, and frozen with lr 0 during the first
`optim.freeze_last_layer_iters` steps, DINO's trick against early collapse).
"""

from __future__ import annotations

import torch
from torch import nn

from megatron_ego.config import OptimConfig
from megatron_ego.runtime.device import cuda_available


def param_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters split into decay / no_decay / prototypes groups (empty ones dropped)."""
    groups = {"decay": [], "no_decay": [], "prototypes": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("prototypes"):
            groups["prototypes"].append(p)
        elif p.ndim < 2:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    return [{"name": k, "params": v, "weight_decay": 0.0} for k, v in groups.items() if v]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch AdamW; its fused CUDA kernel on GPU (one launch for all tensors, like DeepSpeed's
    FusedAdam, without FusedAdam's JIT build at start-up). lr and wd are set every step."""
    return torch.optim.AdamW(param_groups(model), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=0.0, fused=cuda_available())


def apply_schedules(optimizer, lr: float, weight_decay: float, freeze_prototypes: bool) -> None:
    """Set this step's lr and weight decay on every group (`optimizer` may be DeepSpeed's)."""
    for group in optimizer.param_groups:
        name = group.get("name")
        group["lr"] = 0.0 if (name == "prototypes" and freeze_prototypes) else lr
        group["weight_decay"] = 0.0 if name == "no_decay" else weight_decay
