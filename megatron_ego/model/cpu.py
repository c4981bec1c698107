"""The few shims megatron-core 0.16 needs to run on a CPU-only torch (docs/environment.md).

Each shim is a no-op when CUDA is available; on a GPU megatron-core runs unpatched.
The attention shim is not here: a core attention of our own (`attention.SDPAttention`) is put in
the layer spec instead of DotProductAttention, whose scratch buffer and dropout RNG are CUDA-only.
"""

from __future__ import annotations

import types

import torch

from megatron_ego.runtime.device import cuda_available


def make_rope_cpu_safe(rope: torch.nn.Module) -> None:
    """RotaryEmbedding.get_emb moves `inv_freq` to `torch.cuda.current_device()` on first use,
    which raises without CUDA. On CPU, compute the same [s, 1, 1, d] table where inv_freq lives."""
    if cuda_available():
        return

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)  # [s, d/2]
        if self.rotary_interleaved:
            emb = torch.stack((freqs, freqs), dim=-1).view(freqs.shape[0], -1)  # [s, d]
        else:
            emb = torch.cat((freqs, freqs), dim=-1)  # [s, d]
        return emb[:, None, None, :]  # [s, 1, 1, d]

    rope.get_emb = types.MethodType(get_emb, rope)

