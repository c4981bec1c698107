"""An exported network as a module: built from its model config, every tensor of the file
checked against the module (name and shape), nothing else accepted.

    module = load_module(cfg.model, weights, device, Path(folder) / WEIGHTS_FILE)
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_ego.config import ModelConfig
from megatron_ego.export.format import ExportError, module_weights, to_module_names
from megatron_ego.model.egoagent import EgoAgent as EgoAgentModule


def load_module(m: ModelConfig, weights: dict[str, torch.Tensor], device: torch.device,
                 path: Path) -> EgoAgentModule:
    """A fresh module of model config ``m`` holding ``weights`` (checked), in eval mode."""
    module = EgoAgentModule(m, precision="fp32").to(device)
    expected = module_weights(module.state_dict())
    weights = to_module_names(weights, expected)
    check_weights(weights, expected, path)
    module.load_state_dict(weights, strict=False)  # only `_extra_state` entries are absent
    return module.requires_grad_(False).eval()


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                   path: Path) -> None:
    """Every tensor of the module is in the file with its shape, and nothing else is."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    hint = f"{path.name} in {path.parent} does not fit the model its config.yaml describes"
    if missing:
        raise ExportError(f"{hint}: {missing[0]} (and {len(missing) - 1} more) missing; "
                          "re-export the checkpoint with launch/export.py")
    if extra:
        raise ExportError(f"{hint}: unexpected tensor {extra[0]} (and {len(extra) - 1} more)")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ExportError(
                f"{hint}: {name} has shape {tuple(weights[name].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model; use the config.yaml exported with it"
            )
