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


_CHUNK = 1 << 26
"""Elements per lerp on a flat buffer: bounds the fp32 temporary of a bf16/fp16 student."""


def _whole_storage(p: torch.Tensor) -> torch.Tensor:
    """1-D tensor over the whole storage that `p` lives in."""
    n = p.untyped_storage().nbytes() // p.element_size()
    return torch.empty(0, dtype=p.dtype, device=p.device).set_(p.untyped_storage(), 0, (n,))


def _flat_groups(pairs: list[tuple[nn.Parameter, nn.Parameter]]
                 ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple]]:
    """Teacher parameters re-seated into flat fp32 buffers laid out like the student's.

    DeepSpeed ZeRO-1/2 keeps each parameter group of the student as views into one flat
    buffer; the teacher's parameters become views at the same offsets of a buffer of their own,
    so that one update covers a whole buffer. Parameters that do not share a storage stay as
    they are. -> ([(teacher flat, student flat)], [(teacher param, student param)] left over).
    """
    by_storage: dict[int, list[tuple[nn.Parameter, nn.Parameter]]] = {}
    for t, p in pairs:
        by_storage.setdefault(p.untyped_storage().data_ptr(), []).append((t, p))
    flats, single = [], []
    for group in by_storage.values():
        student = _whole_storage(group[0][1])
        covered = sum(p.numel() for _, p in group)
        if (len(group) < 2 or not all(p.is_contiguous() for _, p in group)
                or covered < student.numel() // 2):
            single.extend(group)
            continue
        t0 = group[0][0]
        flat = torch.zeros(student.numel(), dtype=t0.dtype, device=t0.device)
        for t, p in group:
            view = flat[p.storage_offset(): p.storage_offset() + p.numel()].view(p.shape)
            view.copy_(t.detach())
            t.data = view  # the parameter object stays; its storage is now the flat buffer
        flats.append((flat, student))
    return flats, single


class EMA:
    """Pairs teacher and student parameters once; `update(m)` is one lerp per flat buffer
    (DeepSpeed's) and one multi-tensor lerp for any other parameters.

    `make_low(model, dtype)` also keeps a copy of the teacher in that dtype (`self.low`),
    refreshed after every update, for a teacher forward in bf16; the fp32 teacher itself is what
    the EMA updates and what checkpoints hold.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module):
        s = dict(student.named_parameters())
        names = [n for n, _ in teacher.named_parameters()]
        unknown = [n for n in names if n not in s]
        if unknown:
            raise ValueError(f"teacher parameters absent from the student: {unknown[:5]}")
        pairs = [(t, s[n]) for n, t in teacher.named_parameters()]
        self.flats, single = _flat_groups(pairs)
        self.teacher_params = [t for t, _ in single]
        self.student_params = [p for _, p in single]
        self.teacher = teacher
        self.low: nn.Module | None = None
        self._low_flats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._low_params: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    def make_low(self, low: nn.Module, dtype: torch.dtype) -> nn.Module:
        """Seat `low` (a model of the teacher's structure) on `dtype` copies of the teacher's
        flat buffers and parameters; `update` refreshes them. Returns `low`, frozen."""
        by_ptr = {}
        for flat, _ in self.flats:
            copy = flat.to(dtype)
            self._low_flats.append((copy, flat))
            by_ptr[flat.untyped_storage().data_ptr()] = (flat, copy)
        tl, ll = self._low_params
        low_params = dict(low.named_parameters())
        for name, t in self.teacher.named_parameters():
            target = low_params[name]
            ptr = t.untyped_storage().data_ptr()
            if ptr in by_ptr:
                flat, copy = by_ptr[ptr]
                off = t.storage_offset()
                target.data = copy[off: off + t.numel()].view(t.shape)
            else:
                target.data = t.detach().to(dtype)
                tl.append(t)
                ll.append(target.data)
        low.requires_grad_(False)
        self.low = low.eval()
        return self.low

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s, as theta_t + (1 - m)(theta_s - theta_t)
        (student cast to fp32 when it is bf16/fp16)."""
        weight = 1.0 - momentum
        for flat, student in self.flats:
            for t, p in zip(flat.split(_CHUNK), student.split(_CHUNK)):
                t.lerp_(p.to(t.dtype), weight)
        if self.teacher_params:
            src = [p.detach().to(t.dtype) for t, p in zip(self.teacher_params,
                                                          self.student_params)]
            torch._foreach_lerp_(self.teacher_params, src, weight)
        self.refresh_low()

    @torch.no_grad()
    def refresh_low(self) -> None:
        """Copy the fp32 teacher into its low-precision copy (after an update or a load)."""
        for copy, flat in self._low_flats:
            copy.copy_(flat)
        if self._low_params[0]:
            torch._foreach_copy_(self._low_params[1], self._low_params[0])
