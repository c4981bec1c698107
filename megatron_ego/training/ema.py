"""The EMA teacher: an fp32 copy of the student outside the DeepSpeed engine.

megatron-core modules hold process-group handles and cannot be deep-copied, so the teacher is a
second EgoAgent built from the same config and loaded from the student's weights.
Update (DINO): theta_t <- m theta_t + (1 - m) theta_s, with m on a cosine schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from megatron_ego.config import ModelConfig
from megatron_ego.model.egoagent import EgoAgent


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers by name, without megatron's `_extra_state` entries."""
    return {k: v for k, v in module.state_dict().items()
            if not k.endswith("_extra_state") and torch.is_tensor(v)}


def make_teacher(student: nn.Module, cfg: ModelConfig, device: torch.device | str = "cpu"
                 ) -> EgoAgent:
    """A frozen fp32 EgoAgent equal to `student` (the first teacher is the initial student)."""
    teacher = EgoAgent(cfg, precision="fp32").to(device)
    src = _weights(student)
    missing = set(_weights(teacher)) - set(src)
    if missing:
        raise ValueError(f"student lacks teacher weights: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, t in _weights(teacher).items():
            t.copy_(src[name].to(device=device, dtype=t.dtype))
    teacher.requires_grad_(False)
    return teacher.eval()


class EMA:
    """Pairs teacher and student parameters once; `update(m)` is one fused foreach op per dtype."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        s = dict(student.named_parameters())
        names = [n for n, _ in teacher.named_parameters()]
        unknown = [n for n in names if n not in s]
        if unknown:
            raise ValueError(f"teacher parameters absent from the student: {unknown[:5]}")
        self.teacher_params = [p for _, p in teacher.named_parameters()]
        self.student_params = [s[n] for n in names]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s (student cast to fp32 when it is bf16/fp16)."""
        src = [p.detach().to(t.dtype) for t, p in zip(self.teacher_params, self.student_params)]
        torch._foreach_mul_(self.teacher_params, momentum)
        torch._foreach_add_(self.teacher_params, src, alpha=1.0 - momentum)
