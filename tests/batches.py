"""Random micro-batches shaped like the loader's (for model and loss tests)."""

from __future__ import annotations

import torch

from megatron_ego.config import Config


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
