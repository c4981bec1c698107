"""The pretraining loop: DeepSpeed ZeRO-2 student, fp32 EMA teacher, three losses, schedules,
checkpoints on interval / end / signal, exact resume.

The trainer knows nothing of the token layout: what the student and teacher compute for a
micro-batch is the objective's business (losses/objective.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import yaml

from megatron_ego.config import Config, ConfigError, save_config
from megatron_ego.config_io import to_dict
from megatron_ego.losses.objective import EgoAgentObjective
from megatron_ego.model.cpu import seed_everything
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.training import checkpoint as ckpt
from megatron_ego.training.distributed import DistInfo
from megatron_ego.training.ds_config import load_ds_config
from megatron_ego.training.ema import EMA, make_teacher
from megatron_ego.training.flops import clip_flops, device_peak_tflops
from megatron_ego.training.interval import IntervalStats, StepTerms
from megatron_ego.training.metrics import MetricsLogger
from megatron_ego.training.optimizer import apply_schedules, build_optimizer
from megatron_ego.training.preemption import PreemptionHandler
from megatron_ego.training.schedules import build_schedules

log = logging.getLogger(__name__)

PREEMPTED = "PREEMPTED"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    micro_step: int = 0
    """Micro-batches drawn from the loader (the data position)."""
    skipped_nonfinite: int = 0
    """Optimizer steps skipped for a non-finite loss (bf16/fp32; counted at log intervals)."""
    nonfinite_streak: int = 0
    """Consecutive such steps up to the last log interval."""


@dataclass
class StepResult:
    """What `Trainer.train_step` leaves: device-side terms and host-side facts."""

    terms: StepTerms
    values: dict[str, float]
    """The schedules' values used (lr, weight_decay, ema_momentum, teacher_temp)."""
    sources: dict[str, int]
    """Micro-batches per data source."""
    data_wait_s: float
    """Seconds spent waiting for the loader."""


def run_dir_of(cfg: Config) -> str:
    out = cfg.run.output_dir
    return out if Path(out).name == cfg.run.name else os.path.join(out, cfg.run.name)


def check_data_paths(cfg: Config) -> None:
    """Stop before any work when a dataset is missing (one line, with the command to run)."""
    d = cfg.data
    need_ego = cfg.loss.predict_weight > 0 or cfg.loss.act_weight > 0 or d.walking_tours_ratio < 1
    if need_ego and not os.path.isfile(os.path.join(d.egoexo4d_path, "manifest.json")):
        raise ConfigError(
            f"data.egoexo4d_path={d.egoexo4d_path!r} holds no preprocessed dataset; run "
            "`python -m preprocess.egoexo4d --root RAW --out DIR` first and point it there"
        )
    if d.walking_tours_ratio > 0 and not os.path.isfile(
            os.path.join(d.walking_tours_path, "manifest.json")):
        raise ConfigError(
            f"data.walking_tours_path={d.walking_tours_path!r} holds no preprocessed dataset; run "
            "`python -m preprocess.walking_tours --videos DIR --out DIR` or set "
            "data.walking_tours_ratio=0"
        )


def _to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to the device (student inputs are cast to the engine's dtype separately)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in inputs.items()}


class Trainer:
    """Builds everything from a Config and runs `fit()`."""

    def __init__(self, cfg: Config, ds_config_path: str, dist_info: DistInfo,
                 resume: str = "none"):
        self.cfg, self.dist = cfg, dist_info
        self.run_dir = run_dir_of(cfg)
        self.ds_config = load_ds_config(ds_config_path, cfg, dist_info.world_size)
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        self.dtype = _DTYPES[cfg.run.precision]
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        student = EgoAgent(cfg.model, precision=cfg.run.precision)
        optimizer = build_optimizer(student, cfg.optim)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=student, optimizer=optimizer, config=self.ds_config)
        self.teacher = make_teacher(self.engine.module, cfg.model, dist_info.device)
        self.ema = EMA(self.teacher, self.engine.module)
        # bf16 runs: the teacher's forward runs on a bf16 copy of the fp32 EMA weights,
        # refreshed after each EMA update (the fp32 teacher is what the EMA and checkpoints hold)
        self.teacher_forward = self.teacher
        if self.dtype == torch.bfloat16:
            self.teacher_forward = self.ema.make_low(
                EgoAgent(cfg.model, precision="bf16").to(dist_info.device), torch.bfloat16)
        self.objective = EgoAgentObjective(cfg.model, cfg.loss).to(dist_info.device)
        self.schedules = build_schedules(cfg)
        self.state = TrainState()
        if resume not in ("none", "auto") and not os.path.isdir(resume):
            raise ConfigError(f"--resume {resume!r}: expected 'auto', 'none' or a checkpoint folder")
        if resume != "none":
            self._resume(resume)
        if dist_info.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
        self.per_clip = {src: clip_flops(cfg, with_poses=src == "egoexo4d")
                         for src in ("egoexo4d", "walking_tours")}
        self.device_name, self.peak_tflops = device_peak_tflops(cfg.run.precision)

    # ------------------------------------------------------------------------------ checkpoints
    def _resume(self, resume: str) -> None:
        folder = Path(resume) if resume != "auto" else ckpt.find_resume_checkpoint(self.run_dir)
        if folder is None:
            if self.dist.is_main:
                log.info("no complete checkpoint under %s: starting from scratch", self.run_dir)
            return
        state = ckpt.load_checkpoint(self.engine, folder, self.dist.rank)
        self.teacher.load_state_dict(state["teacher"])
        self.ema.refresh_low()
        self.objective.load_state_dict(state["objective"])
        self.state = TrainState(**state["train_state"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d", folder, self.state.step)

    def save(self) -> Path:
        trainer_state = {
            "teacher": self.teacher.state_dict(),
            "objective": self.objective.state_dict(),
            "train_state": vars(self.state).copy(),
            "config": to_dict(self.cfg),
        }
        return ckpt.save_checkpoint(self.engine, self.run_dir, self.state.step, trainer_state,
                                    self.dist.rank, self.cfg.run.keep_last)

    # --------------------------------------------------------------------------------- one step
    def _teacher_context(self):
        if self.dist.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _micro_step(self, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        """Forward + backward of one micro-batch -> its loss terms (detached 0-dim tensors).

        Nothing here waits for the device. A non-finite loss is not checked on the host: its
        gradients are non-finite and DeepSpeed's overflow check skips the optimizer step (as it
        does for fp16); the `nonfinite` term flags it, read at the next log interval.
        """
        batch = _to_device(batch, self.dist.device)
        inputs = _cast(self.objective.student_inputs(batch), self.dtype)
        out = self.engine(**inputs)
        with self._teacher_context():
            teacher_batch = batch if self.teacher_forward is self.teacher else _cast(
                batch, torch.bfloat16)
            targets = self.objective.teacher_targets(self.teacher_forward, teacher_batch)
        loss, terms = self.objective(out, targets, batch, teacher_temp)
        if self.cfg.run.precision != "fp16":  # fp16 overflows are DeepSpeed's loss scaler's
            terms["nonfinite"] = (~torch.isfinite(terms["loss"])).float()
        self.engine.backward(loss)
        self.engine.step()
        return terms

    def train_step(self, loader) -> StepResult:
        """One optimizer step = grad_accum micro-batches; its terms stay on the device."""
        values = self.schedules.at(self.state.step)
        apply_schedules(self.optimizer, values["lr"], values["weight_decay"],
                        self.state.step < self.cfg.optim.freeze_last_layer_iters)
        terms = StepTerms()
        wait = 0.0
        for _ in range(self.grad_accum):
            t0 = time.perf_counter()
            batch = next(loader)
            wait += time.perf_counter() - t0
            self.state.micro_step += 1
            terms.add(batch["source"], self._micro_step(batch, values["teacher_temp"]))
        self.ema.update(values["ema_momentum"])
        self.state.step += 1
        return StepResult(terms, values, dict(terms.counts), wait)

    # ---------------------------------------------------------------------------------- the loop
    def fit(self, max_steps: int | None = None) -> TrainState:
        """Train to schedule.train_iters (or `max_steps` more steps); checkpoint on the way."""
        from megatron_ego.data import build_train_loader

        cfg = self.cfg
        end = cfg.schedule.train_iters
        if max_steps is not None:
            end = min(end, self.state.step + max_steps)
        loader = iter(build_train_loader(cfg, self.dist.rank, self.dist.world_size,
                                         start_micro_step=self.state.micro_step))
        logger = MetricsLogger(self.run_dir, self.dist.is_main, cfg.run.log_interval,
                               cfg.schedule.train_iters, self.state.step,
                               config_text=yaml.safe_dump(to_dict(cfg), sort_keys=False))
        preemption = PreemptionHandler()
        marker = Path(self.run_dir) / PREEMPTED
        if self.dist.is_main and marker.exists():
            marker.unlink()
        skipped_ds = self.engine.skipped_steps
        stats = IntervalStats(self.dist.world_size)
        on_gpu = self.dist.device.type == "cuda"
        try:
            while self.state.step < end:
                t0 = time.perf_counter()
                result = self.train_step(loader)
                elapsed = time.perf_counter() - t0
                host = {**result.values, "sources": result.sources, "step_s": elapsed,
                        "data_wait_s": result.data_wait_s, **self._speed(result.sources, elapsed),
                        "skipped_steps": self.engine.skipped_steps - skipped_ds}
                if cfg.run.precision == "fp16":
                    host["loss_scale"] = float(getattr(self.optimizer, "loss_scale", "nan"))
                if on_gpu:
                    host["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                stats.add(self.state.step, result.terms, host)
                stop = preemption.requested(self.dist.device)
                save = stop or self.state.step % cfg.run.save_interval == 0 or self.state.step == end
                if save or self.state.step % cfg.run.log_interval == 0:
                    self._flush(stats, logger)
                if save:
                    self.save()
                if stop:
                    if self.dist.is_main:
                        marker.write_text(f"stopped by signal at step {self.state.step}\n")
                        log.warning("signal received: checkpoint written at step %d, exiting",
                                    self.state.step)
                    break
        finally:
            preemption.restore()
            logger.close()
        return self.state

    def _flush(self, stats: IntervalStats, logger: MetricsLogger) -> None:
        """The interval's one transfer: per-step records to metrics.jsonl, interval averages and
        per-source averages to TensorBoard; stop after too many non-finite steps in a row."""
        grad_norm = self.engine.get_global_grad_norm()  # the last step's (DeepSpeed's value)
        rows, means, by_source = stats.flush()
        if not rows:
            return
        if torch.is_tensor(grad_norm):
            grad_norm = grad_norm.item()
        rows[-1]["grad_norm"] = means["grad_norm"] = float(
            grad_norm if grad_norm is not None else float("nan"))
        for row in rows:
            if row.pop("nonfinite", 0.0) > 0:
                self.state.skipped_nonfinite += 1
                self.state.nonfinite_streak += 1
            else:
                self.state.nonfinite_streak = 0
            row["skipped_steps"] += self.state.skipped_nonfinite
            logger.log(row["step"], row)
        means.pop("nonfinite", None)
        for terms in by_source.values():
            terms.pop("nonfinite", None)
        for key in ("lr", "weight_decay", "ema_momentum", "teacher_temp", "skipped_steps"):
            if key in rows[-1]:
                means[key] = rows[-1][key]
        seconds = sum(r["step_s"] for r in rows)
        means.update(step_s=seconds / len(rows),
                     data_wait_s=sum(r["data_wait_s"] for r in rows) / len(rows))
        for key in ("clips_per_s", "tokens_per_s", "tflops_per_device", "mfu"):
            done = [r[key] * r["step_s"] for r in rows if key in r]
            if done:
                means[key] = sum(done) / seconds  # work over the interval / its time
        logger.log_averages(rows[-1]["step"], means, by_source)
        if self.state.nonfinite_streak > self.cfg.run.max_nonfinite_retries:
            raise FloatingPointError(
                f"non-finite loss in {self.state.nonfinite_streak} optimizer steps in a row "
                f"(up to step {rows[-1]['step']}; each was skipped); lower optim.lr, check the "
                "data, or resume from an earlier checkpoint")

    def _speed(self, sources: dict[str, int], seconds: float) -> dict[str, float]:
        """Throughput of the step just done, over all ranks."""
        world, mb = self.dist.world_size, self.cfg.run.micro_batch_size
        clips = sum(sources.values()) * mb * world
        flops = sum(n * mb * world * self.per_clip[src]["train"] for src, n in sources.items())
        tokens = sum(n * mb * world * self.per_clip[src]["tokens"] for src, n in sources.items())
        out = {"clips_per_s": clips / seconds, "tokens_per_s": tokens / seconds,
               "tflops_per_device": flops / seconds / world / 1e12}
        if self.peak_tflops:
            out["mfu"] = out["tflops_per_device"] / self.peak_tflops
        return {k: v for k, v in out.items() if math.isfinite(v)}
