"""Typed run configuration: nested dataclasses, loaded from YAML, with dotted CLI overrides.

    cfg = load_config("configs/tiny_cpu.yaml", ["--model.num_layers=2", "--optim.lr=3e-4"])

Unknown keys and values of the wrong type are rejected with a message that names the key.
This module declares the root, the network (`model`) and its data (`data`); the sections of how a
run trains (loss, optim, schedule, ema, run) are in `megatron_ego.config_training`, the range
rules in `megatron_ego.config_checks`, the parsing machinery in `megatron_ego.config_io`. Every
section is importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megatron_ego.config_checks import at_least, check, positive
from megatron_ego.config_io import ConfigError, from_dict, parse_overrides, read_yaml, to_dict
from megatron_ego.config_training import (
    LOSS_TERMS,
    MAX_LR,
    EMAConfig,
    LossConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
)

__all__ = [
    "LOSS_TERMS",
    "MAX_LR",
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
    action_velocity_inputs: bool = False
    """The action projector also reads each pose's velocity (3 channels, m/s; ours): 7 input
    channels instead of the paper's 4 (x, y, z, visibility; Table 8). The tiny CPU demo uses it:
    a frame's ~1 cm motion is otherwise a 1% ripple on the posture after the LayerNorm."""
    action_in_query: bool = False
    """The future-state query of step t carries A_t (ours): its input is the learned query plus
    the action projector's token of A_t, instead of the learned query alone (the paper's layout,
    where the query reaches A_t only through attention to the token just before it)."""
    action_head: Literal["linear", "anchored"] = "linear"
    """The action head. "linear": the paper's one Linear h -> 4 x P x J (Table 8), its output the
    poses themselves (metres). "anchored" (ours, the tiny CPU demo): step 0 has its own output
    layer, both are zero-initialised, step 0 is an offset from a learned mean pose and later
    steps are velocities (m/s) from each joint's last visible position, so the untrained agent
    predicts zero velocity (docs/results.md)."""
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
    """FP8 (delayed scaling) through Transformer Engine (H100 and later); refused with a
    ConfigError when the layer spec is not Transformer Engine's (model/transformer_config.py)."""

    def __post_init__(self) -> None:
        at_least(self, "model", 1, "num_layers", "hidden_size", "num_attention_heads",
                  "patch_size", "image_size", "local_crop_size", "poses_per_step", "num_joints",
                  "head_hidden_dim", "head_bottleneck_dim", "head_out_dim", "rotary_base")
        positive(self, "model", "norm_epsilon", "init_method_std", "pose_rate_hz")
        check(self.pose_channels == 4,
               f"model.pose_channels={self.pose_channels}: poses are stored as (x, y, z, "
               "visibility), so it must be 4")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = _swiglu_hidden(self.hidden_size)
        at_least(self, "model", 1, "ffn_hidden_size")
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


@dataclass
class DataConfig:
    """Preprocessed datasets (see preprocess/) and how micro-batches are drawn from them."""

    egoexo4d_path: str = ""
    """Directory of preprocessed Ego-Exo4D clips (frames + poses): `preprocess.egoexo4d --out`."""
    walking_tours_path: str = ""
    """Directory of preprocessed WalkingTours frames (no poses); empty = none."""
    walking_tours_ratio: float = 0.0
    """Share of WalkingTours samples (representation loss only): of the micro-steps
    (mix_mode "micro_step") or of every micro-batch's samples (mix_mode "within_batch")."""
    mix_mode: Literal["micro_step", "within_batch"] = "micro_step"
    """How the two sources mix. "micro_step": each micro-step draws one source for all ranks
    (homogeneous micro-batches, as the authors' release); at one micro-batch per optimizer step
    every step is then all WalkingTours or all Ego-Exo4D. "within_batch" (ours): every micro-batch
    holds round(ratio x micro_batch_size) WalkingTours frames (rounding carried over micro-steps)
    and the rest Ego-Exo4D clips, the crops of both in one trunk call and the clips' sequence in
    another, so that every optimizer step carries both sources at the ratio (data/mix.py)."""
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
    init_crop_size: int = 300
    """Side of the first crop (paper Sec. 4.2, DoRA's practice against noisy positive pairs; the
    release's init_crop_size=300): a random resized crop of init_crop_scale of the frame, resized
    to this square, from which every global and local crop is cut. 0 = crops from the whole
    frame (DINO's; the demo, docs/recipe.md)."""
    init_crop_scale: tuple[float, float] = (0.2, 1.0)
    """Area range of the first crop, as a fraction of the frame (DoRA main.py)."""
    num_workers: int | None = None
    """DataLoader worker processes per rank; 0 = build micro-batches in the training process;
    None (null) = from the CPUs this process may use, shared by the ranks on its machine, less one
    per rank for the training process, at least 1, at most 16 (data/loader.py `auto_workers`)."""
    prefetch_factor: int = 2
    """Micro-batches each DataLoader worker prepares ahead (each item is a whole micro-batch)."""
    max_bad_record_share: float = 0.001
    """Records that fail to decode during training (a corrupt JPEG, non-finite poses) are
    replaced by the next sample, counted and logged with their file and index; the run stops
    once the skipped records exceed this share of the records drawn (counted over all ranks, and
    never before they exceed this share of the dataset). 0 = stop at the first bad record."""

    def __post_init__(self) -> None:
        at_least(self, "data", 1, "num_global_crops", "prefetch_factor")
        at_least(self, "data", 0, "num_local_crops", "init_crop_size")
        if self.num_workers is not None:
            at_least(self, "data", 0, "num_workers")
        check(0.0 <= self.max_bad_record_share <= 1.0,
               f"data.max_bad_record_share={self.max_bad_record_share} must lie in [0, 1]")
        if not 0.0 <= self.walking_tours_ratio <= 1.0:
            raise ConfigError(
                f"data.walking_tours_ratio={self.walking_tours_ratio} must lie in [0, 1]"
            )
        for name in ("global_crop_scale", "local_crop_scale", "init_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"data.{name}=({lo}, {hi}) must satisfy 0 < lo <= hi <= 1")


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

    def __post_init__(self) -> None:
        iters = self.schedule.train_iters
        for key, value in (("loss.warmup_teacher_temp_iters", self.loss.warmup_teacher_temp_iters),
                           ("optim.freeze_last_layer_iters", self.optim.freeze_last_layer_iters)):
            check(value <= iters, f"{key}={value} must be <= schedule.train_iters={iters}")
        views = self.data.num_global_crops + self.data.num_local_crops
        check(self.loss.represent_weight == 0 or views >= 2,
               f"data.num_global_crops + data.num_local_crops = {views}: the DINO loss compares "
               "views in pairs, so it needs 2 or more (or loss.represent_weight=0)")
        if self.data.walking_tours_ratio > 0 and self.loss.represent_weight == 0:
            raise ConfigError(
                f"data.walking_tours_ratio={self.data.walking_tours_ratio} with "
                "loss.represent_weight=0: WalkingTours micro-batches train only the represent "
                "loss, so they would have nothing to train; set data.walking_tours_ratio=0"
            )
        if self.data.mix_mode == "within_batch":
            from megatron_ego.data.mix import SampleShares

            try:
                SampleShares(self.data.walking_tours_ratio, self.run.micro_batch_size)
            except ValueError as err:
                raise ConfigError(str(err)) from err


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
