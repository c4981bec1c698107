"""A megatron-core core-attention module on torch's scaled_dot_product_attention.

Used in the local layer spec (CPU, or GPU without Transformer Engine) instead of megatron's
DotProductAttention, which allocates a CUDA scratch buffer and forks the CUDA RNG tracker
for dropout. With `rotary_base` it also applies the rotary position embedding to q and k
(positions 0..s-1; model/fused.py), which megatron's attention then must not. Same contract:
q [sq, b, np, hn], k/v [sk, b, ng, hn] -> context [sq, b, np*hn];
`attention_mask` is bool [b or 1, 1, sq, sk] with True = masked out (megatron's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_ego.model.fused import rope_tables, rotary


class SDPAttention(MegatronModule):
    """Core attention (softmax(q k^T / sqrt(d) + mask) v) through torch SDPA."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        rotary_base: float | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention supports context_parallel_size=1 only")
        self.attn_mask_type = attn_mask_type
        self.num_heads = config.num_attention_heads
        self.num_groups = config.num_query_groups or config.num_attention_heads
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.rotary_base = rotary_base

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention: packed sequences and attention bias unsupported")
        sq, b, np_, hn = query.shape
        if self.rotary_base is not None:  # RoPE here: GPTModel was built without its own
            cos, sin = rope_tables(sq, hn, self.rotary_base, query.dtype, query.device)
            if key.shape[0] == sq:  # self-attention: q and k rotated in one go
                qk = rotary(torch.cat([query, key], dim=2), cos, sin)  # [sq, b, np+ng, hn]
                query, key = qk.split([np_, key.shape[2]], dim=2)  # backward: one cat
            else:
                query = rotary(query, cos, sin)  # [sq, b, np, hn]
                key = rotary(key, cos[: key.shape[0]], sin[: key.shape[0]])  # [sk, b, ng, hn]
        if self.num_heads != self.num_groups:  # grouped-query attention
            rep = self.num_heads // self.num_groups
            key = key.repeat_interleave(rep, dim=2)
            value = value.repeat_interleave(rep, dim=2)
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)  # [b, np, sk, hn]
        v = value.permute(1, 2, 0, 3)  # [b, np, sk, hn]
        mask_type = attn_mask_type or self.attn_mask_type
        if attention_mask is None:
            if mask_type != AttnMaskType.causal:
                raise ValueError("SDPAttention: a non-causal mask type needs an explicit mask")
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.softmax_scale,
                dropout_p=self.dropout_p if self.training else 0.0,
            )
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale,  # SDPA: True = attend
                dropout_p=self.dropout_p if self.training else 0.0,
            )  # [b, np, sq, hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)  # [sq, b, np*hn]
