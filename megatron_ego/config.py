"""Typed run configuration: nested dataclasses, loaded from YAML, with dotted CLI overrides.

    cfg = load_config("configs/tiny_cpu.yaml", ["--model.num_layers=2", "--optim.lr=3e-4"])

Unknown keys and values of the wrong type are rejected with a message that names the key.
The parsing machinery lives in `megatron_ego.config_io`; this module only declares the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megatron_ego.config_io import ConfigError, from_dict, parse_overrides, read_yaml, to_dict

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EMAConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "load_config",
    "save_config",
]


def _swiglu_hidden(hidden_size: int) -> int:
    """InternLM's MLP width: 8/3 x hidden, rounded up to a multiple of 256 (1024 -> 2816)."""
    return int(math.ceil(hidden_size * 8 / 3 / 256) * 256)


@dataclass
class ModelConfig:
    """The EgoAgent network: an InternLM-style megatron-core GPTModel plus projectors and heads."""

    num_layers: int = 22
    """Transformer layers in the trunk (paper Table 7: 22 for 300M and 1B)."""
    hidden_size: int = 1024
    """Embedding dim (1024 for 300M, 2048 for 1B)."""
    num_attention_heads: int = 8
    """Attention heads (8 for 300M, 16 for 1B; head dim 128)."""
    ffn_hidden_size: int | None = None
    """SwiGLU hidden size; None = 8/3 x hidden rounded up to a multiple of 256."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    rotary_base: int = 10000
    """RoPE base."""
    init_method_std: float = 0.02
    """Std of the normal init of the trunk's linear layers."""
    image_size: int = 224
    """Side of the student's frames and of the global crops, in pixels."""
    local_crop_size: int = 112
    """Side of the local multi-crops, in pixels."""
    patch_size: int = 16
    """Image projector kernel and stride (224 -> 14 x 14 = 196 tokens)."""
    num_steps: int = 4
    """T: time steps per clip, each one image and the poses that follow it."""
    poses_per_step: int = 5
    """Poses (30 fps frames) per step: 5 poses per image sampled at 6 fps."""
    pose_rate_hz: float = 30.0
    """Pose frame rate: the unit of the action projector's velocity input and of the action
    head's motion output (m/s)."""
    num_joints: int = 17
    """Body joints per pose (COCO order)."""
    pose_channels: int = 4
    """x, y, z (metres, camera frame) and visibility."""
    head_hidden_dim: int = 2048
    """Hidden width of the DINO heads' MLP."""
    head_bottleneck_dim: int = 256
    """Bottleneck of the DINO heads (L2-normalised before the prototypes)."""
    head_out_dim: int = 65536
    """Prototypes (K) of the representation and state-prediction heads."""
    frame_bidirectional: bool = False
    """Full attention inside one frame's patches, causal elsewhere (default: causal everywhere)."""
    predict_head_init: Literal["random", "represent"] = "random"
    """Initial weights of the state-prediction head: its own random draw, or a copy of the
    representation head's (ours; separate weights either way), so that its K prototypes start
    where the teacher's targets are. The tiny CPU demo uses "represent" (docs/results.md)."""
    transformer_impl: Literal["auto", "transformer_engine", "local"] = "auto"
    """Layer spec: Transformer Engine where it imports ('auto'), or megatron-core local modules."""
    recompute: bool = False
    """Full activation checkpointing of every trunk layer (the authors' setting for the student);
    non-reentrant, see model/backbone.py `checkpoint_layers`."""
    compile_elementwise: bool = False
    """Local spec: run the fused RMSNorm/RoPE bodies (model/fused.py) and megatron's fused SwiGLU
    through torch.compile, one generated kernel each (ours; for GPUs: on CPU it needs a C++
    compiler and compiles for minutes). Off: the same fused autograd nodes, run eagerly."""
    fp8: bool = False
    """FP8 (delayed scaling) through Transformer Engine; H100 only, ignored without TE."""

    def __post_init__(self) -> None:
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = _swiglu_hidden(self.hidden_size)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        for name in ("image_size", "local_crop_size"):
            if getattr(self, name) % self.patch_size:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)} must be a multiple of "
                    f"model.patch_size={self.patch_size}"
                )
        if self.num_steps < 2:
            raise ConfigError(f"model.num_steps={self.num_steps}: need at least 2 time steps")

    @property
    def patches_per_image(self) -> int:
        """Image tokens of one global frame (224 / 16)^2 = 196."""
        return (self.image_size // self.patch_size) ** 2

    def to_transformer_config(self, *, bf16: bool = False, fp16: bool = False,
                              transformer_engine: bool = False):
        """megatron-core TransformerConfig for the trunk, every field set explicitly.

        `transformer_engine`: the TE layer spec is used, so megatron's fused kernels are
        available: fused RoPE (TE's) and the fused SwiGLU. Without them, RoPE and SwiGLU run as
        separate element-wise kernels, which took ~45% of the GPU time of a 300M step on an
        H100 (docs/benchmarks.md).
        """
        import torch
        import torch.nn.functional as F
        from megatron.core.transformer.transformer_config import TransformerConfig

        on_gpu = torch.cuda.is_available()
        params_dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
        fp8 = {}
        if self.fp8:
            fp8 = dict(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024,
                       fp8_amax_compute_algo="max")
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            ffn_hidden_size=self.ffn_hidden_size,
            kv_channels=self.hidden_size // self.num_attention_heads,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=True,  # SwiGLU
            activation_func=F.silu,
            add_bias_linear=False,
            add_qkv_bias=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            bf16=bf16,
            fp16=fp16,
            params_dtype=params_dtype,
            # CPU-unsafe fusions stay off; they are CUDA kernels (ENVIRONMENT.md).
            apply_rope_fusion=transformer_engine,
            # fused SwiGLU (no bias to add): megatron's own kernel with TE, else torch.compile
            bias_activation_fusion=transformer_engine or self.compile_elementwise,
            bias_dropout_fusion=False,
            masked_softmax_fusion=False,
            gradient_accumulation_fusion=False,
            persist_layer_norm=False,
            use_cpu_initialization=not on_gpu,
            tensor_model_parallel_size=1,
            pipeline_model_parallel_size=1,
            **fp8,
        )


@dataclass
class DataConfig:
    """Preprocessed datasets (see preprocess/) and how micro-batches are drawn from them."""

    egoexo4d_path: str = ""
    """Directory of preprocessed Ego-Exo4D clips (frames + poses): `preprocess.egoexo4d --out`."""
    walking_tours_path: str = ""
    """Directory of preprocessed WalkingTours frames (no poses); empty = none."""
    walking_tours_ratio: float = 0.0
    """Fraction of micro-batches drawn from WalkingTours (representation loss only)."""
    num_global_crops: int = 2
    """DINO global crops per clip (224 px)."""
    num_local_crops: int = 6
    """DINO local crops per clip (112 px); 0 disables them."""
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    """Area range of a global crop, as a fraction of the frame."""
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    """Area range of a local crop, as a fraction of the frame."""
    photometric: bool = True
    """DINO's photometric augmentations (colour jitter, grayscale, blur, solarize) on every
    crop; False keeps crops and flips only (the tiny CPU demo, docs/results.md)."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    prefetch_factor: int = 2
    """Micro-batches each DataLoader worker prepares ahead (each item is a whole micro-batch)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.walking_tours_ratio <= 1.0:
            raise ConfigError(
                f"data.walking_tours_ratio={self.walking_tours_ratio} must lie in [0, 1]"
            )
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"data.{name}=({lo}, {hi}) must satisfy 0 < lo <= hi <= 1")


@dataclass
class LossConfig:
    """Weights and temperatures of L = l_rep L_rep + l_pred L_pred + l_act L_act."""

    represent_weight: float = 1.0
    """l_rep: DINO multi-crop loss through the representation head (0 = ablation no_represent)."""
    predict_weight: float = 1.0
    """l_pred: DINO loss of the predicted future state vs the teacher's next frame."""
    act_weight: float = 1.0
    """l_act: L1 on visible joints plus visibility BCE."""
    visibility_weight: float = 1.0
    """Weight of the visibility binary cross-entropy inside the action loss."""
    act_motion_loss: Literal["l1", "mse"] = "l1"
    """Position term of the steps t >= 1 (motion): L1 in metres as the paper, or the squared
    error in cm^2. Step 0 (a posture from one image, no pose history) is L1 either way. With L1
    a short run stays at the zero-motion median, drowned by step 0's decimetre errors and the
    visibility term; the tiny CPU demo uses "mse" (docs/results.md)."""
    student_temp: float = 0.1
    """Student softmax temperature."""
    teacher_temp: float = 0.04
    """Teacher softmax temperature after warm-up."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at step 0 (DINO warms it up linearly; equal to teacher_temp = none)."""
    warmup_teacher_temp_iters: int = 0
    """Iterations of the linear teacher-temperature warm-up."""
    center_momentum: float = 0.9
    """Momentum of the teacher centering buffer."""
    koleo_weight: float = 0.0
    """DINOv2's KoLeo regulariser on the student's state features of the first global crop
    (pushes each feature away from its nearest neighbour in the batch, against feature collapse);
    0 = off, as in the paper. The tiny CPU demo uses it: its short runs otherwise collapse."""
    predict_contrastive_weight: float = 0.0
    """Weight of the contrastive future-state term (ours, losses/contrastive.py): InfoNCE of each
    predicted state against the teacher logits of the micro-batch's real next frames. 0 = off,
    as in the paper. The tiny CPU demo uses it: with the DINO term alone its predictions do not
    tell the next frame from its neighbours (docs/results.md)."""
    predict_contrastive_temp: float = 0.02
    """Temperature of that InfoNCE (cosine similarities / temperature)."""
    centering: Literal["ema", "sinkhorn_knopp"] = "ema"
    """Teacher centering: DINO's EMA center (the paper's setting) or Sinkhorn-Knopp
    normalisation over the batch (DINOv2's option; steadier for small batches and short runs)."""

    def __post_init__(self) -> None:
        for name in ("represent_weight", "predict_weight", "act_weight", "visibility_weight",
                     "koleo_weight", "predict_contrastive_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}={getattr(self, name)} must be >= 0")
        if self.represent_weight == self.predict_weight == self.act_weight == 0:
            raise ConfigError("loss: all three weights are 0; nothing would be trained")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp",
                     "predict_contrastive_temp"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"loss.{name}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ConfigError(f"loss.center_momentum={self.center_momentum} must lie in [0, 1)")


@dataclass
class OptimConfig:
    """AdamW and its per-iteration schedules (paper Table 9)."""

    lr: float = 6e-4
    """Peak learning rate after warm-up."""
    min_lr_ratio: float = 0.01
    """Final learning rate as a fraction of lr (cosine end)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.04
    """Weight decay at step 0 (cosine schedule to weight_decay_end)."""
    weight_decay_end: float = 0.4
    """Weight decay at the last step."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (must equal zero2.json's gradient_clipping)."""
    freeze_last_layer_iters: int = 0
    """Iterations during which the DINO heads' prototype layers get no update (DINO's trick)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")


@dataclass
class ScheduleConfig:
    """Run length and warm-up."""

    train_iters: int = 72000
    """Optimizer steps of the whole run."""
    warmup_iters: int = 1800
    """Linear learning-rate warm-up steps."""

    def __post_init__(self) -> None:
        if self.train_iters <= 0:
            raise ConfigError(f"schedule.train_iters={self.train_iters} must be > 0")
        if not 0 <= self.warmup_iters <= self.train_iters:
            raise ConfigError(
                f"schedule.warmup_iters={self.warmup_iters} must lie in [0, train_iters]"
            )


@dataclass
class EMAConfig:
    """The teacher: an exponential moving average of the student, in fp32."""

    momentum: float = 0.996
    """EMA momentum at step 0 (cosine schedule to momentum_end)."""
    momentum_end: float = 1.0
    """EMA momentum at the last step."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= self.momentum_end <= 1.0:
            raise ConfigError(
                f"ema.momentum={self.momentum}, ema.momentum_end={self.momentum_end}: "
                "need 0 <= momentum <= momentum_end <= 1"
            )


@dataclass
class RunConfig:
    """Batch sizes, precision, output and checkpoint cadence."""

    name: str = "egoagent"
    """Run name (the run directory is output_dir/name unless output_dir ends with it)."""
    output_dir: str = "runs"
    """Where checkpoints, tensorboard and metrics.jsonl go."""
    seed: int = 0
    """Global seed: model init, data order, augmentation."""
    micro_batch_size: int = 8
    """Clips per micro-batch per rank (zero2.json's train_micro_batch_size_per_gpu)."""
    global_batch_size: int = 1920
    """Clips per optimizer step over all ranks (zero2.json's train_batch_size)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Mixed precision: must agree with zero2.json's bf16/fp16 blocks."""
    log_interval: int = 10
    """Steps between console lines and metrics.jsonl records."""
    save_interval: int = 1000
    """Steps between checkpoints (a checkpoint is also written at the end and on SIGTERM/SIGUSR1)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted."""
    max_nonfinite_retries: int = 3
    """Under bf16/fp32: consecutive non-finite losses tolerated (step skipped) before stopping."""

    def __post_init__(self) -> None:
        if self.micro_batch_size <= 0 or self.global_batch_size <= 0:
            raise ConfigError("run.micro_batch_size and run.global_batch_size must be > 0")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"run.global_batch_size={self.global_batch_size} must be a multiple of "
                f"run.micro_batch_size={self.micro_batch_size}"
            )


@dataclass
class Config:
    """One run: every section of the YAML file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML run config, apply `--section.key=value` overrides, validate everything."""
    raw = read_yaml(path) if path else {}
    raw = parse_overrides(overrides, raw)
    return from_dict(Config, raw)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config (every field, defaults included) as YAML."""
    import os

    import yaml

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, path)
