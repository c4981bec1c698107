"""The pretraining loop: DeepSpeed ZeRO-2 student, fp32 EMA teacher, three losses, schedules,
checkpoints on interval / end / signal, exact resume.

The trainer knows nothing of the token layout: what the student and teacher compute for a
micro-batch is the objective's business (losses/objective.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import deepspeed
import torch
import yaml

from megatron_ego.config import Config, ConfigError, save_config
from megatron_ego.config_io import to_dict
from megatron_ego.data.on_device import to_device
from megatron_ego.losses.objective import EgoAgentObjective
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.runtime.device import seed_everything
from megatron_ego.runtime.processes import Processes
from megatron_ego.training import checkpoint as ckpt
from megatron_ego.training.ds_config import load_ds_config
from megatron_ego.training.ema import EMA, make_teacher
from megatron_ego.training.flops import clip_flops, device_peak_tflops
from megatron_ego.training.guards import BadRecords, SkippedSteps, check_finite_weights
from megatron_ego.training.init_from import (
    InitSource,
    check_model_config,
    fresh_names,
    load_shared,
    read_init_source,
    summary_line,
)
from megatron_ego.training.interval import IntervalStats, StepTerms
from megatron_ego.training.metrics import MetricsLogger, truncate_metrics
from megatron_ego.training.optimizer import apply_schedules, build_optimizer
from megatron_ego.training.preemption import PreemptionHandler
from megatron_ego.training.report import count_records, flush_interval, step_speed
from megatron_ego.training.resume import data_position, decide_resume
from megatron_ego.training.run_folder import (  # noqa: F401  (re-exported: older imports)
    PREEMPTED,
    check_data_paths,
    run_dir_of,
)
from megatron_ego.training.schedules import build_schedules
from megatron_ego.training.state import StepResult, TrainState

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    """Floating tensors to the engine's dtype (the loader's uint8 images were normalised on the
    device by data/on_device.py `to_device`)."""
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in inputs.items()}


class Trainer:
    """Builds everything from a Config and runs `fit()`."""

    def __init__(self, cfg: Config, ds_config_path: str, dist_info: Processes,
                 resume: str = "none", overwrite: bool = False):
        self.cfg, self.dist = cfg, dist_info
        self.run_dir = run_dir_of(cfg)
        self.ds_config = load_ds_config(ds_config_path, cfg, dist_info.world_size)
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        self.dtype = _DTYPES[cfg.run.precision]
        # Which checkpoint, before any model is built: a refused resume costs nothing.
        folder, self.run_id = decide_resume(self.run_dir, resume, overwrite,
                                            cfg.run.global_batch_size, cfg.run.micro_batch_size,
                                            dist_info.is_main)
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        student = EgoAgent(cfg.model, precision=cfg.run.precision)
        init_source = self._init_source(folder)
        if init_source is not None:  # before DeepSpeed copies the weights into its partitions
            loaded = load_shared(student, init_source.student, init_source, "student")
        optimizer = build_optimizer(student, cfg.optim)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=student, optimizer=optimizer, config=self.ds_config)
        ckpt.install_safe_checkpoint_engine(self.engine)
        self.teacher = make_teacher(self.engine.module, cfg.model, dist_info.device)
        if init_source is not None:
            load_shared(self.teacher, init_source.teacher, init_source, "teacher")
            if dist_info.is_main:
                log.info(summary_line(cfg, init_source, loaded, fresh_names(student)))
        self.ema = EMA(self.teacher, self.engine.module)
        # bf16 runs: the teacher's forward runs on a bf16 copy of the fp32 EMA weights,
        # refreshed after each EMA update (the fp32 teacher is what the EMA and checkpoints hold)
        self.teacher_forward = self.teacher
        if self.dtype == torch.bfloat16:
            self.teacher_forward = self.ema.make_low(
                EgoAgent(cfg.model, precision="bf16").to(dist_info.device), torch.bfloat16)
        self.objective = EgoAgentObjective(cfg.model, cfg.loss).to(dist_info.device)
        self.objective.defer_center_updates()  # once per step: the same on any world size
        self.schedules = build_schedules(cfg)
        self.state = TrainState()
        self.skips = SkippedSteps(cfg.optim.max_skipped_steps, dist_info.is_main)
        self.bad_records: BadRecords | None = None  # set by fit() once the data is open
        if folder is not None:
            self._resume(folder)
        if dist_info.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            if ckpt.read_run_id(self.run_dir) != self.run_id:
                ckpt.write_run_id(self.run_dir, self.run_id)
            truncate_metrics(self.run_dir, self.state.step)
            save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
        self.per_clip = {src: clip_flops(cfg, self.engine.module, with_poses=src == "egoexo4d")
                         for src in ("egoexo4d", "walking_tours")}
        self.device_name, self.peak_tflops = device_peak_tflops(cfg.run.precision)

    # ------------------------------------------------------------------------------ checkpoints
    def _init_source(self, resume_from: Path | None) -> InitSource | None:
        """run.init_from's weights, unless this run resumes from a checkpoint of its own."""
        path = self.cfg.run.init_from
        if not path:
            return None
        if resume_from is not None:
            if self.dist.is_main:
                log.info("run.init_from=%s ignored: the run resumes from its own checkpoint", path)
            return None
        source = read_init_source(path)
        check_model_config(self.cfg.model, source)
        return source

    def _resume(self, folder: Path) -> None:
        manifest = ckpt.read_manifest(folder) or {}
        saved_world = int(manifest.get("world_size", self.dist.world_size))
        try:
            state = ckpt.load_checkpoint(self.engine, folder, self.dist.rank)
        except ckpt.CheckpointError as err:
            raise ConfigError(str(err)) from err
        self.teacher.load_state_dict(state["teacher"])
        self.ema.refresh_low()
        self.objective.load_state_dict(state["objective"])
        self.state = TrainState(**state["train_state"])
        if saved_world != self.dist.world_size and self.cfg.data.mix_mode == "within_batch":
            raise ConfigError(
                f"{folder} was written by {saved_world} ranks, this run has "
                f"{self.dist.world_size}: data.mix_mode=within_batch draws per rank, so its data "
                f"position does not carry over; resume on {saved_world} ranks")
        self.state.micro_step = data_position(
            self.state.micro_step, saved_world, self.dist.world_size,
            self.cfg.run.global_batch_size, self.cfg.run.micro_batch_size)
        if self.dist.is_main:
            changed = (f" (written by {saved_world} ranks, now {self.dist.world_size}: optimizer "
                       "state re-partitioned)" if saved_world != self.dist.world_size else "")
            log.info("resumed from %s at step %d%s", folder, self.state.step, changed)

    def save(self) -> Path:
        """Checkpoint the run; refused (TrainingStopped, nothing written) when the student or the
        teacher holds a non-finite weight on any rank."""
        check_finite_weights({"student": self.engine.module, "teacher": self.teacher},
                             self.state.step)
        trainer_state = {
            "teacher": self.teacher.state_dict(),
            "objective": self.objective.state_dict(),
            "train_state": vars(self.state).copy(),
            "config": to_dict(self.cfg),
        }
        meta = {"run_id": self.run_id, "global_batch_size": self.cfg.run.global_batch_size,
                "micro_batch_size": self.cfg.run.micro_batch_size}
        return ckpt.save_checkpoint(self.engine, self.run_dir, self.state.step, trainer_state,
                                    self.dist.rank, self.cfg.run.keep_last, meta)

    # --------------------------------------------------------------------------------- one step
    def _teacher_context(self):
        if self.dist.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _micro_step(self, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        """Forward + backward of one micro-batch -> its loss terms (detached 0-dim tensors).

        Nothing here waits for the device. A non-finite loss is not checked on the host: its
        gradients are non-finite and DeepSpeed's overflow check skips the optimizer step (under
        every precision: train_step sees engine.skipped_steps grow); the `nonfinite` term flags
        it, read at the next log interval.
        """
        batch = to_device(batch, self.dist.device)
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
        sources = {"egoexo4d": 0, "walking_tours": 0}
        bad = drawn = 0
        wait = 0.0
        skipped_before = self.engine.skipped_steps
        for _ in range(self.grad_accum):
            t0 = time.perf_counter()
            batch = next(loader)
            wait += time.perf_counter() - t0
            self.state.micro_step += 1
            bad += self._note_bad_records(batch.pop("bad_records", []))
            drawn += batch.pop("drawn", 0)
            counts = batch.get("counts") or {batch["source"]: self.cfg.run.micro_batch_size}
            for source, n in counts.items():  # samples of this rank
                sources[source] += n
            terms.add(batch["source"], self._micro_step(batch, values["teacher_temp"]))
        self.objective.commit_centers()
        skipped = self.engine.skipped_steps > skipped_before  # a host int, the same on every rank
        if not skipped:
            self.ema.update(values["ema_momentum"])  # a skipped step changed no student weight
        self.state.step += 1
        self.state.skipped_steps += int(skipped)
        self.skips.record(self.state.step, skipped, "inf/nan gradients: no weight or EMA update")
        return StepResult(terms, values, sources, wait, (bad, drawn))

    def _note_bad_records(self, bad: list[str]) -> int:
        """Log this rank's records that failed to decode (each names its file and index)."""
        for message in bad:
            log.warning("rank %d: bad record skipped, the next sample used instead: %s",
                        self.dist.rank, message)
        return len(bad)

    # ---------------------------------------------------------------------------------- the loop
    def fit(self, max_steps: int | None = None) -> TrainState:
        """Train to schedule.train_iters (or `max_steps` more steps); checkpoint on the way."""
        from megatron_ego.data import build_train_loader

        cfg = self.cfg
        end = cfg.schedule.train_iters
        if max_steps is not None:
            end = min(end, self.state.step + max_steps)
        try:
            loader = build_train_loader(cfg, self.dist.rank, self.dist.world_size,
                                        start_micro_step=self.state.micro_step)
        except (FileNotFoundError, ValueError) as e:  # IndexedDataError passes: pretrain.py
            raise ConfigError(str(e)) from e
        self.bad_records = BadRecords(cfg.data.max_bad_record_share, loader.num_records)
        self.bad_records.add(self.state.bad_records, self.state.drawn_records)  # resumed run
        logger = MetricsLogger(self.run_dir, self.dist.is_main, cfg.run.log_interval,
                               cfg.schedule.train_iters, self.state.step,
                               config_text=yaml.safe_dump(to_dict(cfg), sort_keys=False))
        preemption = PreemptionHandler()
        marker = Path(self.run_dir) / PREEMPTED
        if self.dist.is_main and marker.exists():
            marker.unlink()
        stats = IntervalStats(self.dist.world_size)
        records = [0, 0]  # bad, drawn on this rank since the last log interval
        on_gpu = self.dist.device.type == "cuda"
        due = False  # an interval checkpoint postponed by skipped steps
        try:
            while self.state.step < end:
                t0 = time.perf_counter()
                result = self.train_step(loader)
                elapsed = time.perf_counter() - t0
                records = [records[0] + result.records[0], records[1] + result.records[1]]
                sources = result.sources
                host = {**result.values, "sources": sources, "step_s": elapsed,
                        "data_wait_s": result.data_wait_s,
                        **step_speed(self.per_clip, self.peak_tflops, self.dist.world_size,
                                     sources, elapsed),
                        "walking_tours_share": sources["walking_tours"] / sum(sources.values()),
                        "skipped_steps": self.state.skipped_steps}
                if cfg.run.precision == "fp16":
                    host["loss_scale"] = float(getattr(self.optimizer, "loss_scale", "nan"))
                if on_gpu:
                    host["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                stats.add(self.state.step, result.terms, host)
                stop = preemption.requested(self.dist.device)
                due = due or self.state.step % cfg.run.save_interval == 0
                postpone = due and self.skips.in_a_row and not (stop or self.state.step == end)
                save = not postpone and (stop or due or self.state.step == end)
                if save or self.state.step % cfg.run.log_interval == 0:
                    count_records(self.state, self.bad_records, records, self.dist.device)
                    records = [0, 0]
                    flush_interval(self.engine, self.state, stats, logger,
                                   cfg.run.max_nonfinite_retries)
                if postpone and self.dist.is_main:  # the weights are those of a skipped step
                    log.warning("step %d: checkpoint postponed until a step is not skipped",
                                self.state.step)
                if save:
                    self.save()
                    due = False
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
