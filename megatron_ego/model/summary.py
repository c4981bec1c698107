"""Print a JSON summary of an EgoAgent config: backbone class, parameter counts, sequence lengths.

    python -m megatron_ego.model.summary --config configs/egoagent_300m.yaml [--model.key=value ...]

The model is built on torch's meta device: shapes and counts are exact (the same modules as a real
build; tests/test_model.py checks this against a real build of the tiny config) but no weight is
allocated, so the 1B summary takes well under a second.
"""

from __future__ import annotations

import json
import sys

import torch

from megatron_ego.cli_help import make_parser
from megatron_ego.config import Config, load_config
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.model.layout import FeatureLayout


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def summarize(model: EgoAgent, cfg: Config) -> dict:
    """Counts and shapes of a built EgoAgent (real or meta)."""
    c = cfg.model
    gpt = model.backbone.gpt
    local_patches = (c.local_crop_size // c.patch_size) ** 2
    return {
        "backbone_class": f"{type(gpt).__module__}.{type(gpt).__qualname__}",
        "layer_spec": model.backbone.spec_name,
        "trunk_parameters": model.backbone.trunk_parameters(),
        "head_parameters": {
            "image_projector": count(model.image_projector),
            "action_projector": count(model.action_projector),
            "query_tokens": count(model.queries),
            "represent_head": count(model.represent_head),
            "predict_head": count(model.predict_head),
            "action_head": count(model.action_head),
            **({"initial_action_head": count(model.initial_action_head),
                "mean_pose": model.mean_pose.numel()}
               if hasattr(model, "initial_action_head") else {}),
        },
        "action_projector_in_channels": model.action_projector.proj.in_channels,
        "action_head_out_features": model.action_head.proj.out_features,
        "trainable_parameters": count(model, trainable_only=True),
        "sequence_length": {
            "student": model.layout.seq_len,
            "feature_global": FeatureLayout(c.patches_per_image).seq_len,
            "feature_local": FeatureLayout(local_patches).seq_len,
        },
        "transformer": {
            "num_layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "num_attention_heads": c.num_attention_heads,
            "ffn_hidden_size": c.ffn_hidden_size,
            "normalization": "RMSNorm",
            "position_embedding": "rope",
            "activation": "swiglu",
        },
    }


def build_on_meta(cfg: Config) -> EgoAgent:
    """The real module tree with meta tensors: exact shapes, no memory, no init cost."""
    with torch.device("meta"):
        return EgoAgent(cfg.model)


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    args, overrides = parser.parse_known_args(argv)
    cfg = load_config(args.config, overrides)
    json.dump(summarize(build_on_meta(cfg), cfg), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
