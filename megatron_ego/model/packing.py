"""Several trunk calls as one: token sequences of different lengths packed along one axis.

The student runs the trunk on three kinds of sequence per micro-batch: the interleaved clip
[b, S, h], the global crops [b*G, N+1, h] and the local crops [b*L, n+1, h]. Everything in a
layer except attention works token by token, so the three go through the layers as one
[sum b_i s_i, 1, h] tensor: one norm, one matrix product, one SwiGLU... per layer instead of
three (the host issues about a third of the operators, the GPU gets one larger product).
Attention runs segment by segment (`SDPAttention` reads the `Segments` that megatron passes
through as `packed_seq_params`): a token attends only to its own sequence, as before.

    segs = Segments.of([x1, x2], [None, mask2])   # x_i [b_i, s_i, h]
    tokens = segs.pack([x1, x2])                   # [N, 1, h], N = sum b_i s_i
    y1, y2 = segs.unpack(hidden)                   # [b_i, s_i, h] views of hidden [N, 1, h]

Token order: segment by segment, and in a segment sample by sample (the `thd` layout). Rotary
positions restart at 0 in every sample (`rope_tables`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_ego.model.fused import rope_tables

_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MAX_TABLES = 8
"""Packed tables kept (one per segment layout, dtype and device; a run has one or two)."""


@dataclass(eq=False)
class Segments(PackedSeqParams):
    """The packed sequences' shapes [(b_i, s_i)] and attention masks (None = causal, or bool
    [1 or b_i, 1, s_i, s_i], True = masked). megatron's attention passes it through untouched
    (its own packed handling is for qkv_format 'thd')."""

    qkv_format: str = "segments"
    shapes: tuple[tuple[int, int], ...] = ()
    masks: tuple[torch.Tensor | None, ...] = field(default=())

    @classmethod
    def of(cls, seqs: list[torch.Tensor], masks: list[torch.Tensor | None]) -> Segments:
        """Segments of the sequences x_i [b_i, s_i, h] with their masks."""
        if len(seqs) != len(masks):
            raise ValueError(f"{len(seqs)} sequences but {len(masks)} masks")
        return cls(shapes=tuple((x.shape[0], x.shape[1]) for x in seqs), masks=tuple(masks))

    @property
    def sizes(self) -> list[int]:
        """Tokens per segment, b_i * s_i."""
        return [b * s for b, s in self.shapes]

    def pack(self, seqs: list[torch.Tensor]) -> torch.Tensor:
        """x_i [b_i, s_i, h] -> [N, 1, h] (one copy)."""
        h = seqs[0].shape[-1]
        return torch.cat([x.reshape(-1, h) for x in seqs])[:, None]  # [N, 1, h]

    def unpack(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """[N, 1, ...] -> views [b_i, s_i, ...] per segment."""
        return [chunk.view(b, s, *hidden.shape[2:])
                for chunk, (b, s) in zip(hidden.split(self.sizes), self.shapes)]

    def rope_tables(self, dim: int, base: float, dtype: torch.dtype, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, 1, d]: every sample's positions 0..s_i-1, in packed order; made once
        per layout (`fused.rope_tables` for each length)."""
        key = (self.shapes, dim, float(base), dtype, str(device))
        if key not in _TABLES:
            if len(_TABLES) >= _MAX_TABLES:
                _TABLES.clear()
            cos, sin = [], []
            for b, s in self.shapes:
                c, t = rope_tables(s, dim, base, dtype, device)  # [s, 1, 1, d]
                cos.append(c[None].expand(b, -1, -1, -1, -1).reshape(b * s, 1, 1, dim))
                sin.append(t[None].expand(b, -1, -1, -1, -1).reshape(b * s, 1, 1, dim))
            _TABLES[key] = (torch.cat(cos), torch.cat(sin))
        return _TABLES[key]
