"""The compute device and seeding, as training, evaluation and inference need them."""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    """True when a CUDA device can be used (a CUDA build of torch on a CPU machine says False)."""
    return torch.cuda.is_available()


def seed_everything(seed: int) -> None:
    """Seed torch; on GPU also megatron's CUDA RNG tracker (model_parallel_cuda_manual_seed),
    which on CPU raises 'Torch not compiled with CUDA enabled' and is not needed: the trunk has no
    dropout and TP is 1."""
    torch.manual_seed(seed)
    if cuda_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
