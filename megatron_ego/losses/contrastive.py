"""Contrastive future-state loss (ours, optional): rank the real next frame above the others.

The DINO prediction loss matches the teacher's sharpened distribution over K prototypes, which
neighbouring frames share almost exactly; nothing in it asks the prediction to be closer to
I_{t+1} than to I_t, I_{t-1} or a similar-looking place. Future-state retrieval measures exactly
that. This InfoNCE term (CPC-style) scores each predicted state against the teacher's logits of
every real next frame in the micro-batch by cosine / temperature; its own next frame is the
positive, all others (the same clip's other steps included) are negatives.

    loss = predict_infonce(future_logits, next_frame_logits, temperature=0.02)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def predict_infonce(predicted: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """predicted [n, K] (student), targets [n, K] (teacher, detached) -> mean cross-entropy of
    row i's cosine similarities / temperature against the one-hot of column i."""
    if predicted.shape != targets.shape or predicted.dim() != 2:
        raise ValueError(f"predicted {tuple(predicted.shape)} and targets "
                         f"{tuple(targets.shape)} must both be [n, K]")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(predicted.float(), dim=-1)  # [n, K]
    k = F.normalize(targets.detach().float(), dim=-1)  # [n, K]
    scores = q @ k.t() / temperature  # [n, n]
    return F.cross_entropy(scores, torch.arange(len(q), device=q.device))
