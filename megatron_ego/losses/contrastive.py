"""Contrastive future-state loss (ours, optional): rank the real next frame above the others.

The DINO prediction loss matches the teacher's sharpened distribution over K prototypes, which
neighbouring frames share almost exactly; nothing in it asks the prediction to be closer to
I_{t+1} than to I_t, I_{t-1} or a similar-looking place. Future-state retrieval measures exactly
that. This InfoNCE term (CPC-style) scores each predicted state against the teacher's logits of
every real next frame in the micro-batch by cosine / temperature; its own next frame is the
positive, all others (the same clip's other steps included) are negatives.

    loss = predict_infonce(future_logits, next_frame_logits, temperature=0.02)

`predict_direction_loss` (ours, loss.predict_direction_weight) asks the one thing retrieval's
direction accuracy measures: that each prediction be closer to I_{t+1} than to the frame it sees
(I_t) and the one before (I_{t-1}), all three from the same clip.

    loss = predict_direction_loss(future_logits, frame_logits, temperature=0.02)
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


def predict_direction_loss(predicted: torch.Tensor, frames: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """predicted [b, T-1, K] (student; step t predicts I_{t+1}), frames [b, T, K] (teacher logits
    of I_0 .. I_{T-1}, detached) -> mean over steps of the cross-entropy of picking I_{t+1} among
    {I_{t+1}, I_t, I_{t-1}} by cosine / temperature (step 0 has no I_{-1}: two candidates)."""
    b, steps, k = predicted.shape
    if frames.shape != (b, steps + 1, k):
        raise ValueError(f"frames {tuple(frames.shape)} must be [b, T, K] = "
                         f"[{b}, {steps + 1}, {k}] for predicted {tuple(predicted.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(predicted.float(), dim=-1)  # [b, T-1, K]
    f = F.normalize(frames.detach().float(), dim=-1)  # [b, T, K]
    nxt, cur = f[:, 1:], f[:, :-1]  # [b, T-1, K]: I_{t+1}, I_t
    prev = torch.cat([cur[:, :1], cur[:, :-1]], dim=1)  # [b, T-1, K]: I_{t-1} (step 0: a stand-in)
    candidates = torch.stack([nxt, cur, prev], dim=2)  # [b, T-1, 3, K]
    scores = (candidates @ q.unsqueeze(-1)).squeeze(-1) / temperature  # [b, T-1, 3]
    has_prev = torch.arange(steps, device=q.device) > 0  # [T-1]
    scores[:, :, 2] = scores[:, :, 2].masked_fill(~has_prev, float("-inf"))
    return -scores.log_softmax(dim=-1)[..., 0].mean()
