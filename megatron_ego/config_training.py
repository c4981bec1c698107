"""How a run trains: the objective's weights and temperatures (`loss`), AdamW and its
schedules (`optim`, `schedule`), the EMA teacher (`ema`), and batches, precision, output and
checkpoints (`run`). Sections of `megatron_ego.config.Config`, importable from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from megatron_ego.config_checks import at_least, check, positive
from megatron_ego.config_io import ConfigError

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LR = 1.0
"""Largest accepted optim.lr: AdamW moves each weight by about lr per step, so anything near 1
destroys a network of weights of magnitude 0.02; larger values are typos (a missing `e-4`)."""

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
    """Start of the DINO center: zero, then EMA after each loss (the official DINO), or the mean
    of the first micro-batch of the global batch's slot 0, the same on any number of ranks
    (ours, the tiny CPU demo: no zero-start transient in a short run's loss)."""
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
        at_least(self, "loss", 0, "warmup_teacher_temp_iters")
        unknown = sorted(set(self.may_rise) - set(LOSS_TERMS))
        check(not unknown, f"loss.may_rise names {unknown}, which no run logs: use terms of "
                           f"{list(LOSS_TERMS)}")
        check(not self.may_rise or bool(self.may_rise_reason.strip()),
              "loss.may_rise is set without loss.may_rise_reason: say why those terms may rise")
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
        check(0.0 < self.lr <= MAX_LR,
               f"optim.lr={self.lr} must lie in (0, {MAX_LR}] (the paper's is 6e-4 at 300M)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        for beta in self.betas:
            check(0.0 <= beta < 1.0, f"optim.betas={list(self.betas)}: each must lie in [0, 1)")
        positive(self, "optim", "eps")
        at_least(self, "optim", 0, "weight_decay", "weight_decay_end", "freeze_last_layer_iters")
        check(self.grad_clip >= 0,
               f"optim.grad_clip={self.grad_clip} must be > 0, or 0 to disable clipping")
        at_least(self, "optim", 1, "max_skipped_steps")


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
    init_from_partial: bool = False
    """Let run.init_from load a source whose trunk has another model.num_layers: the layers both
    have are loaded, the others start afresh (each named in the log). Off (the default): a
    layer-count mismatch is refused at start-up (exit 2), as it would load part of a trunk."""
    max_nonfinite_retries: int = 3
    """Under bf16/fp32: optimizer steps in a row whose loss was non-finite (DeepSpeed skips
    each: no weight or EMA update; counted as `nonfinite_steps` in metrics.jsonl) before the
    run stops (exit 3). Checked at each log interval: the step never reads the loss on the host."""

    lease_renew_s: float = 60.0
    """Seconds between renewals of the run folder's lease (`<run_dir>/LEASE`: one job per run
    folder; a second is refused, exit 2; training/lease.py)."""
    lease_expiry_s: float = 600.0
    """A lease not renewed for this many seconds is taken over by the next job, when its holder
    is on another host and SLURM cannot say whether it still runs (a dead holder on the same
    host, or an ended SLURM job, is taken over at once). Must be >= 2 x lease_renew_s."""

    def __post_init__(self) -> None:
        positive(self, "run", "lease_renew_s")
        check(self.lease_expiry_s >= 2 * self.lease_renew_s,
              f"run.lease_expiry_s={self.lease_expiry_s} must be >= 2 x run.lease_renew_s="
              f"{self.lease_renew_s} (a holder renews several times before it may expire)")
        check(bool(_RUN_NAME.fullmatch(self.name)),
               f"run.name={self.name!r} must be a plain folder name (letters, digits, '.', '_', "
               "'-'; no path separators, no leading '.' or '-'); put the parent in run.output_dir")
        check(self.output_dir.strip() != "", "run.output_dir must not be empty")
        at_least(self, "run", 0, "seed", "max_nonfinite_retries")
        at_least(self, "run", 1, "log_interval", "save_interval", "keep_last")
        if self.micro_batch_size <= 0 or self.global_batch_size <= 0:
            raise ConfigError("run.micro_batch_size and run.global_batch_size must be > 0")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"run.global_batch_size={self.global_batch_size} must be a multiple of "
                f"run.micro_batch_size={self.micro_batch_size}"
            )
