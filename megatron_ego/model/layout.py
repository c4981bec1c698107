"""THE token layout: the interleaved student sequence, the feature branch, their masks.

Student sequence over T steps (docs/paper_facts.md), step t = 0 .. T-1:

    [I_t patches x N] [action query] [A_t action token] [future-state query]

- the action query's output predicts A_t from I_<=t and A_<t (it sits before A_t);
- the future-state query's output predicts the state of I_{t+1} from I_<=t and A_<=t.
Attention is causal over the whole sequence; with `frame_bidirectional` the N patches of one
image attend to each other fully (still nothing later than their frame).

Feature branch (teacher, multi-crops, k-NN): `[I patches x n] [state query]`, for any crop size;
the feature is the state query's output (the last position).

Masks are bool [1, 1, s, s], True = masked out (megatron-core's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


def causal_mask(seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [s, s]: True above the diagonal (a position never sees a later one)."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)


def open_blocks(mask: torch.Tensor, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """Unmask full attention inside each [start, end) block of a [s, s] mask (copy)."""
    mask = mask.clone()
    for start, end in blocks:
        mask[start:end, start:end] = False
    return mask


@dataclass(frozen=True)
class StudentLayout:
    """Positions of every token of the student sequence."""

    num_steps: int
    """T: time steps."""
    patches: int
    """N: image tokens per frame."""
    frame_bidirectional: bool = False

    @property
    def step_len(self) -> int:
        """Tokens per step: N patches + action query + action token + future-state query."""
        return self.patches + 3

    @property
    def seq_len(self) -> int:
        return self.num_steps * self.step_len

    def image_start(self, t: int) -> int:
        return t * self.step_len

    def action_query_position(self, t: int) -> int:
        return t * self.step_len + self.patches

    def action_token_position(self, t: int) -> int:
        return t * self.step_len + self.patches + 1

    def future_query_position(self, t: int) -> int:
        return t * self.step_len + self.patches + 2

    @cached_property
    def action_query_positions(self) -> torch.Tensor:
        """int64 [T]: where the outputs predicting A_0 .. A_{T-1} are read."""
        return torch.tensor([self.action_query_position(t) for t in range(self.num_steps)])

    @cached_property
    def future_query_positions(self) -> torch.Tensor:
        """int64 [T]: where the outputs predicting the state of I_1 .. I_T are read."""
        return torch.tensor([self.future_query_position(t) for t in range(self.num_steps)])

    @property
    def action_query_slice(self) -> slice:
        """The action query positions as a strided slice: `hidden[slice]` is a view [T, ...]
        (no index tensor, so nothing is copied to the device per step)."""
        return slice(self.action_query_position(0), self.seq_len, self.step_len)

    @property
    def future_query_slice(self) -> slice:
        """The future-state query positions as a strided slice (see `action_query_slice`)."""
        return slice(self.future_query_position(0), self.seq_len, self.step_len)

    def assemble(
        self,
        image_tokens: torch.Tensor,
        action_tokens: torch.Tensor,
        action_query: torch.Tensor,
        future_query: torch.Tensor,
    ) -> torch.Tensor:
        """image_tokens [b, T, N, h], action_tokens [b, T, h], action_query [h], future_query [h]
        (or [b, T, h]: one per step) -> [b, S, h]."""
        b, t, n, h = image_tokens.shape
        if (t, n) != (self.num_steps, self.patches):
            raise ValueError(
                f"image tokens [b, T, N, h] = {tuple(image_tokens.shape)} do not match the layout "
                f"(T={self.num_steps}, N={self.patches})"
            )
        aq = action_query.expand(b, t, 1, h)  # [b, T, 1, h]
        if future_query.dim() == 3:
            future_query = future_query.unsqueeze(2)  # [b, T, 1, h]
        fq = future_query.expand(b, t, 1, h)  # [b, T, 1, h]
        steps = torch.cat([image_tokens, aq, action_tokens.unsqueeze(2), fq], dim=2)  # [b, T, N+3, h]
        return steps.reshape(b, self.seq_len, h)  # [b, S, h]

    def attention_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """bool [1, 1, S, S], True = masked."""
        mask = causal_mask(self.seq_len, device)
        if self.frame_bidirectional:
            blocks = [(self.image_start(t), self.image_start(t) + self.patches)
                      for t in range(self.num_steps)]
            mask = open_blocks(mask, blocks)
        return mask[None, None]


@dataclass(frozen=True)
class FeatureLayout:
    """`[patches x n][state query]`: the representation branch for one crop size."""

    patches: int
    frame_bidirectional: bool = False

    @property
    def seq_len(self) -> int:
        return self.patches + 1

    @property
    def state_query_position(self) -> int:
        return self.patches

    def assemble(self, image_tokens: torch.Tensor, state_query: torch.Tensor) -> torch.Tensor:
        """image_tokens [n, N, h], state_query [h] -> [n, N+1, h]."""
        n, _, h = image_tokens.shape
        return torch.cat([image_tokens, state_query.expand(n, 1, h)], dim=1)  # [n, N+1, h]

    def attention_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """bool [1, 1, N+1, N+1], True = masked."""
        mask = causal_mask(self.seq_len, device)
        if self.frame_bidirectional:
            mask = open_blocks(mask, [(0, self.patches)])
        return mask[None, None]
