"""Model FLOPs per training clip, and MFU against the device's peak.

Counted as Megatron does: 2 FLOPs per multiply-add in every matmul of the forward pass; the
attention scores and their product with V are 4 s^2 h per layer (full square, as Megatron and
PaLM count); the backward pass costs twice the forward (so a student clip is 3x its forward);
activation recomputation is NOT counted (model FLOPs, not hardware FLOPs). The teacher runs
forward only. Element-wise ops, norms and softmax are ignored.

Per Ego-Exo4D clip, the student runs the interleaved sequence (T (N+3) tokens), G global and L
local crops through the feature branch, the state-prediction head on T-1 outputs, the action head
on T, the representation head on G+L; the teacher runs G global crops and the T-1 next frames
with its representation head. A WalkingTours clip runs only the crops, student and teacher.
"""

from __future__ import annotations

from megatron_ego.config import Config

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


def _head_flops(cfg: Config) -> tuple[float, float]:
    """(DINO head, action head) forward FLOPs per output token."""
    m = cfg.model
    dino = 2 * (m.hidden_size * m.head_hidden_dim + m.head_hidden_dim ** 2
                + m.head_hidden_dim * m.head_bottleneck_dim + m.head_bottleneck_dim * m.head_out_dim)
    action = 2 * m.hidden_size * m.pose_channels * m.poses_per_step * m.num_joints
    return dino, action


def clip_flops(cfg: Config, with_poses: bool = True) -> dict[str, float]:
    """{'student_forward', 'teacher_forward', 'train'} FLOPs and 'tokens' (trunk tokens, student
    and teacher) for one clip."""
    m, d = cfg.model, cfg.data
    n_global = m.patches_per_image
    n_local = (m.local_crop_size // m.patch_size) ** 2
    dino, action = _head_flops(cfg)
    patch = 2 * 3 * m.patch_size ** 2 * m.hidden_size  # image projector per patch
    crops_student = (d.num_global_crops * (trunk_forward_flops(cfg, n_global + 1) + n_global * patch)
                     + d.num_local_crops * (trunk_forward_flops(cfg, n_local + 1) + n_local * patch)
                     + (d.num_global_crops + d.num_local_crops) * dino)
    crops_teacher = d.num_global_crops * (trunk_forward_flops(cfg, n_global + 1)
                                          + n_global * patch + dino)
    student, teacher = crops_student, crops_teacher
    tokens = (2 * d.num_global_crops * (n_global + 1) + d.num_local_crops * (n_local + 1))
    if with_poses:
        t = m.num_steps
        seq = t * (n_global + 3)
        # the action projector reads x, y, z, visibility and 3 velocity channels per pose
        pose_proj = 2 * (m.pose_channels + 3) * m.poses_per_step * m.num_joints * m.hidden_size
        student += (trunk_forward_flops(cfg, seq) + t * (n_global * patch + pose_proj)
                    + (t - 1) * dino + t * action)
        teacher += (t - 1) * (trunk_forward_flops(cfg, n_global + 1) + n_global * patch + dino)
        tokens += seq + (t - 1) * (n_global + 1)
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
