"""Model FLOPs per training clip, and MFU against the device's peak.

Counted as Megatron does: 2 FLOPs per multiply-add in every matmul of the forward pass; the
attention scores and their product with V are 4 s^2 h per layer (full square, as Megatron and
PaLM count); the backward pass costs twice the forward (so a student clip is 3x its forward);
activation recomputation is NOT counted (model FLOPs, not hardware FLOPs). The teacher runs
forward only. Element-wise ops, norms and softmax are ignored.

Layer shapes (patch size, action projector channels, head widths, sequence lengths) are read from
the built modules (`clip_flops(cfg, model)`), so a config switch that changes a module changes the
count. Per Ego-Exo4D clip, the student runs the interleaved sequence (T (N+3) tokens), G global
and L local crops through the feature branch, the state-prediction head on T-1 outputs, the action
head on T, the representation head on G+L; the teacher runs G global crops and the T-1 next frames
with its representation head. A WalkingTours clip runs only the crops, student and teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from megatron_ego.config import Config
from megatron_ego.model.layout import FeatureLayout

# Dense peak (no sparsity) in TFLOP/s per device, by precision, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def trunk_forward_flops(cfg: Config, seq_len: int) -> float:
    """One trunk forward over one sequence of `seq_len` tokens."""
    m = cfg.model
    h, f, layers = m.hidden_size, m.ffn_hidden_size, m.num_layers
    matmul_params = 4 * h * h + 3 * h * f  # qkv + proj, SwiGLU fc1 (2 f) + fc2
    return layers * (2 * matmul_params * seq_len + 4 * seq_len * seq_len * h)


def _matmul_flops(*weights: torch.Tensor) -> float:
    """Forward FLOPs per input vector of linear maps / convs that each produce one output vector
    per input (2 per multiply-add): 2 x the weights' element count."""
    return float(sum(2 * w.numel() for w in weights))


def _dino_head_flops(head: nn.Module) -> float:
    """One DINO head on one token: its MLP's linears and the prototype layer."""
    linears = [m.weight for m in head.mlp if isinstance(m, nn.Linear)]
    return _matmul_flops(*linears, head.prototypes)


def clip_flops(cfg: Config, model: nn.Module, with_poses: bool = True) -> dict[str, float]:
    """{'student_forward', 'teacher_forward', 'train'} FLOPs and 'tokens' (trunk tokens, student
    and teacher) for one clip, from the shapes of the built EgoAgent `model` (real or meta)."""
    m, d = cfg.model, cfg.data
    patch_size = model.image_projector.patch_size
    n_global = (m.image_size // patch_size) ** 2
    n_local = (m.local_crop_size // patch_size) ** 2
    feature_global = FeatureLayout(n_global).seq_len
    feature_local = FeatureLayout(n_local).seq_len
    dino = _dino_head_flops(model.represent_head)
    patch = _matmul_flops(model.image_projector.proj.weight)  # per patch token
    crops_student = (d.num_global_crops * (trunk_forward_flops(cfg, feature_global)
                                           + n_global * patch)
                     + d.num_local_crops * (trunk_forward_flops(cfg, feature_local)
                                            + n_local * patch)
                     + (d.num_global_crops + d.num_local_crops) * dino)
    crops_teacher = d.num_global_crops * (trunk_forward_flops(cfg, feature_global)
                                          + n_global * patch + dino)
    student, teacher = crops_student, crops_teacher
    tokens = 2 * d.num_global_crops * feature_global + d.num_local_crops * feature_local
    if with_poses:
        t, seq = model.layout.num_steps, model.layout.seq_len
        pose_proj = _matmul_flops(model.action_projector.proj.weight)  # one token per step
        action = _matmul_flops(model.action_head.proj.weight)  # each step: one head's output
        predict = _dino_head_flops(model.predict_head)
        student += (trunk_forward_flops(cfg, seq) + t * (n_global * patch + pose_proj)
                    + (t - 1) * predict + t * action)
        teacher += (t - 1) * (trunk_forward_flops(cfg, feature_global) + n_global * patch + dino)
        tokens += seq + (t - 1) * feature_global
    return {"student_forward": student, "teacher_forward": teacher,
            "train": 3 * student + teacher, "tokens": tokens}


def device_peak_tflops(precision: str) -> tuple[str, float | None]:
    """(device name, dense peak TFLOP/s) for the current CUDA device; None where unknown (CPU)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return name, peaks[precision]
    return name, None
