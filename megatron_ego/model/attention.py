"""A megatron-core core-attention module on torch's scaled_dot_product_attention.

Used in the local layer spec (CPU, or GPU without Transformer Engine) instead of megatron's
DotProductAttention, which allocates a CUDA scratch buffer and forks the CUDA RNG tracker
for dropout. With `rotary_base` it also applies the rotary position embedding to q and k
(positions 0..s-1; model/fused.py), which megatron's attention then must not. Same contract:
q [sq, b, np, hn], k/v [sk, b, ng, hn] -> context [sq, b, np*hn];
`attention_mask` is bool [b or 1, 1, sq, sk] with True = masked out (megatron's convention).
With `packed_seq_params` a `Segments` (model/packing.py), q/k/v are [N, 1, heads, hn], several
sequences packed, and each segment attends within its own sequences (with its own mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_ego.model.fused import rope_tables, rotary
from megatron_ego.model.packing import Segments


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
        if attention_bias is not None:
            raise NotImplementedError("SDPAttention: attention bias unsupported")
        mask_type = attn_mask_type or self.attn_mask_type
        if isinstance(packed_seq_params, Segments):
            return self._segments(query, key, value, packed_seq_params, mask_type)
        if packed_seq_params is not None:
            raise NotImplementedError("SDPAttention: packed sequences other than Segments")
        sq, b, np_, hn = query.shape
        if self.rotary_base is not None:  # RoPE here: GPTModel was built without its own
            cos, sin = rope_tables(sq, hn, self.rotary_base, query.dtype, query.device)
            if key.shape[0] == sq:  # self-attention: q and k rotated in one go
                query, key = self._rotate(query, key, cos, sin)
            else:
                query = rotary(query, cos, sin)  # [sq, b, np, hn]
                key = rotary(key, cos[: key.shape[0]], sin[: key.shape[0]])  # [sk, b, ng, hn]
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
        v = value.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
        out = self._attend(q, k, v, attention_mask, mask_type)  # [b, np, sq, hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)  # [sq, b, np*hn]

    @staticmethod
    def _rotate(query, key, cos, sin):
        """q [s, ..., np, hn] and k [s, ..., ng, hn] rotated in one node (backward: one cat)."""
        qk = rotary(torch.cat([query, key], dim=2), cos, sin)  # [s, ..., np+ng, hn]
        return qk.split([query.shape[2], key.shape[2]], dim=2)

    def _segments(self, query, key, value, segs: Segments, mask_type) -> torch.Tensor:
        """q [N, 1, np, hn], k/v [N, 1, ng, hn], packed -> context [N, 1, np*hn]."""
        n, _, np_, hn = query.shape
        if self.rotary_base is not None:
            query, key = self._rotate(query, key, *segs.rope_tables(
                hn, self.rotary_base, query.dtype, query.device))  # tables [N, 1, 1, hn]
        outs = []
        for (b, s), q, k, v, mask in zip(segs.shapes, query.split(segs.sizes),
                                         key.split(segs.sizes), value.split(segs.sizes),
                                         segs.masks):
            q, k, v = (t.view(b, s, t.shape[2], hn).transpose(1, 2) for t in (q, k, v))
            out = self._attend(q, k, v, mask, mask_type)  # [b, np, s, hn]
            outs.append(out.transpose(1, 2).reshape(b * s, np_ * hn))
        return torch.cat(outs)[:, None]  # [N, 1, np*hn]

    def _attend(self, q, k, v, attention_mask, mask_type) -> torch.Tensor:
        """q [b, np, sq, hn], k/v [b, ng, sk, hn] -> [b, np, sq, hn]."""
        if self.num_heads != self.num_groups:  # grouped-query attention
            rep = self.num_heads // self.num_groups
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        dropout = self.dropout_p if self.training else 0.0
        if attention_mask is None:
            if mask_type != AttnMaskType.causal:
                raise ValueError("SDPAttention: a non-causal mask type needs an explicit mask")
            return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  scale=self.softmax_scale, dropout_p=dropout)
        return F.scaled_dot_product_attention(  # SDPA's bool mask: True = attend
            q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale, dropout_p=dropout)
