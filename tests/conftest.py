"""Shared fixtures: small configs and models, built on CPU, seeded."""

from __future__ import annotations

import pytest
import torch

from megatron_ego.config import Config, load_config


@pytest.fixture
def tiny_cfg() -> Config:
    """configs/tiny_cpu.yaml shrunk further so that a forward takes milliseconds."""
    return load_config(
        "configs/tiny_cpu.yaml",
        ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
         "--model.image_size=32", "--model.local_crop_size=16", "--model.head_hidden_dim=64",
         "--model.head_bottleneck_dim=16", "--model.head_out_dim=32"],
    )


@pytest.fixture
def tiny_model(tiny_cfg):
    from megatron_ego.model.egoagent import EgoAgent

    torch.manual_seed(0)
    return EgoAgent(tiny_cfg.model).eval()


def random_clip_batch(cfg: Config, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A micro-batch shaped like the loader's Ego-Exo4D batches (random values)."""
    c, d = cfg.model, cfg.data
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(b, c.num_steps, 4, c.poses_per_step, c.num_joints, generator=g)
    poses[:, :, 3] = (torch.rand(b, c.num_steps, c.poses_per_step, c.num_joints, generator=g)
                      > 0.2).float()
    return {
        "source": "egoexo4d",
        "frames": torch.randn(b, c.num_steps, 3, c.image_size, c.image_size, generator=g),
        "poses": poses,
        "global_crops": torch.randn(b, d.num_global_crops, 3, c.image_size, c.image_size,
                                    generator=g),
        "local_crops": torch.randn(b, d.num_local_crops, 3, c.local_crop_size,
                                   c.local_crop_size, generator=g),
    }


from .slurm_fakes import fake_bin  # noqa: E402, F401  (fixture of the SLURM script tests)
