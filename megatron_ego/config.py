"""Typed run configuration: nested dataclasses, loaded from YAML, with dotted CLI overrides.

    cfg = load_config("configs/tiny_cpu.yaml", ["--model.num_layers=2", "--optim.lr=3e-4"])

Unknown keys and values of the wrong type are rejected with a message that names the key.
The parsing machinery lives in `megatron_ego.config_io`; this module only declares the fields.
"""

from __future__ import annotations

import math
import re
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


def _check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok` (the message names the key, value and the rule)."""
    if not ok:
        raise ConfigError(message)


def _at_least(obj: object, section: str, minimum: float, *names: str) -> None:
    """Every field in `names` of `obj` must be >= minimum."""
    for name in names:
        value = getattr(obj, name)
        _check(value >= minimum, f"{section}.{name}={value} must be >= {minimum}")


def _positive(obj: object, section: str, *names: str) -> None:
    """Every field in `names` of `obj` must be > 0."""
    for name in names:
        value = getattr(obj, name)
        _check(value > 0, f"{section}.{name}={value} must be > 0")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LR = 1.0
"""Largest accepted optim.lr: AdamW moves each weight by about lr per step, so anything near 1
destroys a network of weights of magnitude 0.02; larger values are typos (a missing `e-4`)."""


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
        _at_least(self, "model", 1, "num_layers", "hidden_size", "num_attention_heads",
                  "patch_size", "image_size", "local_crop_size", "poses_per_step", "num_joints",
                  "head_hidden_dim", "head_bottleneck_dim", "head_out_dim", "rotary_base")
        _positive(self, "model", "norm_epsilon", "init_method_std", "pose_rate_hz")
        _check(self.pose_channels == 4,
               f"model.pose_channels={self.pose_channels}: poses are stored as (x, y, z, "
               "visibility), so it must be 4")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = _swiglu_hidden(self.hidden_size)
        _at_least(self, "model", 1, "ffn_hidden_size")
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
        _at_least(self, "data", 1, "num_global_crops", "prefetch_factor")
        _at_least(self, "data", 0, "num_local_crops", "init_crop_size")
        if self.num_workers is not None:
            _at_least(self, "data", 0, "num_workers")
        _check(0.0 <= self.max_bad_record_share <= 1.0,
               f"data.max_bad_record_share={self.max_bad_record_share} must lie in [0, 1]")
        if not 0.0 <= self.walking_tours_ratio <= 1.0:
            raise ConfigError(
                f"data.walking_tours_ratio={self.walking_tours_ratio} must lie in [0, 1]"
            )
        for name in ("global_crop_scale", "local_crop_scale", "init_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"data.{name}=({lo}, {hi}) must satisfy 0 < lo <= hi <= 1")


LOSS_TERMS = ("loss_represent", "loss_predict", "loss_act", "loss_predict_contrastive",
              "loss_predict_direction")
"""The loss terms a run logs to metrics.jsonl (losses/objective.py)."""


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
    center_init: Literal["zero", "first_batch"] = "zero"
    """Start of the DINO center: zero, then EMA after each loss (the official DINO), or the first
    batch's mean (ours, the tiny CPU demo: no zero-start transient in a short run's loss)."""
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
    predict_direction_weight: float = 0.0
    """Weight of the direction term (ours, losses/contrastive.py): each prediction must be closer,
    by cosine / predict_contrastive_temp, to the teacher's I_{t+1} than to its I_t and I_{t-1} of
    the same clip. 0 = off, as in the paper (docs/results.md)."""
    centering: Literal["ema", "sinkhorn_knopp"] = "ema"
    """Teacher centering: DINO's EMA center (the paper's setting) or Sinkhorn-Knopp
    normalisation over the batch (DINOv2's option; steadier for small batches and short runs)."""
    may_rise: list[str] = field(default_factory=list)
    """Loss terms (metrics.jsonl names, e.g. loss_predict) whose rise over a run the run's own
    check (`python -m megatron_ego.eval.demo_summary`) reports as allowed instead of failing;
    needs may_rise_reason. Empty: every term must go down."""
    may_rise_reason: str = ""
    """Why the terms of may_rise may rise (printed by the check beside them)."""

    def __post_init__(self) -> None:
        _at_least(self, "loss", 0, "warmup_teacher_temp_iters")
        unknown = sorted(set(self.may_rise) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"loss.may_rise names {unknown}, which no run logs: use terms of "
                              f"{list(LOSS_TERMS)}")
        if self.may_rise and not self.may_rise_reason.strip():
            raise ConfigError("loss.may_rise is set without loss.may_rise_reason: say why those "
                              "terms may rise")
        for name in ("represent_weight", "predict_weight", "act_weight", "visibility_weight",
                     "koleo_weight", "predict_contrastive_weight", "predict_direction_weight"):
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
    """Global gradient-norm clip (must equal zero2.json's gradient_clipping); 0 disables it."""
    freeze_last_layer_iters: int = 0
    """Iterations during which the DINO heads' prototype layers get no update (DINO's trick)."""
    max_skipped_steps: int = 25
    """Optimizer steps skipped in a row (DeepSpeed's loss scaler found inf/nan gradients, or no
    micro-batch had a finite loss) before the run stops as diverged. fp16's dynamic loss scale
    skips up to ~17 steps in a row while it falls from 2^16 to 1, hence 25."""

    def __post_init__(self) -> None:
        _check(0.0 < self.lr <= MAX_LR,
               f"optim.lr={self.lr} must lie in (0, {MAX_LR}] (the paper's is 6e-4 at 300M)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        for beta in self.betas:
            _check(0.0 <= beta < 1.0, f"optim.betas={list(self.betas)}: each must lie in [0, 1)")
        _positive(self, "optim", "eps")
        _at_least(self, "optim", 0, "weight_decay", "weight_decay_end", "freeze_last_layer_iters")
        _check(self.grad_clip >= 0,
               f"optim.grad_clip={self.grad_clip} must be > 0, or 0 to disable clipping")
        _at_least(self, "optim", 1, "max_skipped_steps")


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
    init_from: str = ""
    """Start from another run's weights (the recipe's stage 2 from stage 1): a run folder (its
    newest complete checkpoint), a checkpoint folder or an export folder. Loads the student's and
    the teacher's trunk, image projector, state query and representation head; everything else
    (other modules, optimizer, schedules, step, DINO centers) starts afresh. Not a resume: a run
    that has a checkpoint of its own resumes from it and ignores this. Empty = from scratch."""
    max_nonfinite_retries: int = 3
    """Under bf16/fp32: optimizer steps in a row whose loss was non-finite (DeepSpeed skips
    each: no weight or EMA update; counted as `nonfinite_steps` in metrics.jsonl) before the
    run stops (exit 1). Checked at each log interval: the step never reads the loss on the host."""

    def __post_init__(self) -> None:
        _check(bool(_RUN_NAME.fullmatch(self.name)),
               f"run.name={self.name!r} must be a plain folder name (letters, digits, '.', '_', "
               "'-'; no path separators, no leading '.' or '-'); put the parent in run.output_dir")
        _check(self.output_dir.strip() != "", "run.output_dir must not be empty")
        _at_least(self, "run", 0, "seed", "max_nonfinite_retries")
        _at_least(self, "run", 1, "log_interval", "save_interval", "keep_last")
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

    def __post_init__(self) -> None:
        iters = self.schedule.train_iters
        for key, value in (("loss.warmup_teacher_temp_iters", self.loss.warmup_teacher_temp_iters),
                           ("optim.freeze_last_layer_iters", self.optim.freeze_last_layer_iters)):
            _check(value <= iters, f"{key}={value} must be <= schedule.train_iters={iters}")
        views = self.data.num_global_crops + self.data.num_local_crops
        _check(self.loss.represent_weight == 0 or views >= 2,
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
