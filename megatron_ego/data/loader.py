"""Training micro-batches: what the trainer consumes.

    loader = build_train_loader(cfg, rank, world_size, start_micro_step=N)
    batch = to_device(next(loader), device)   # micro-step N of this rank, on the device

`MicroBatchDataset` (micro_batch.py, with the batch contract) builds each micro-batch from nothing
but (seed, micro-step, rank, world size, accumulation steps); here a torch DataLoader runs it in
`data.num_workers` persistent worker processes, which hand the training process uint8 images
through shared memory; `on_device.to_device` finishes them on the device.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from megatron_ego.data.augment import MultiCropSpec
from megatron_ego.data.micro_batch import (
    BadRecord,
    MicroBatchDataset,
    SampleSource,
    sample_rng,
)
from megatron_ego.data.mix import EGOEXO4D, WALKING_TOURS

__all__ = [
    "MAX_AUTO_WORKERS",
    "BadRecord",
    "MicroBatchDataset",
    "SampleSource",
    "TrainBatches",
    "auto_workers",
    "build_train_loader",
    "keep_heap_memory",
    "local_ranks",
    "make_loader",
    "sample_rng",
]

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 16
"""Most loader workers per rank `auto_workers` gives: one rank's DataLoader delivered 397 clips/s
with 8 workers and 408 with 14 on the H100 host (docs/benchmarks.md, "Data loader"); more workers
only hold more memory."""


def local_ranks(environ: Mapping[str, str], world_size: int) -> int:
    """Training processes on this machine: LOCAL_WORLD_SIZE (torchrun), LOCAL_SIZE (DeepSpeed's
    launcher), else all `world_size` ranks (the fewest CPUs each)."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if environ.get(key, "").isdigit() and int(environ[key]) > 0:
            return int(environ[key])
    return max(1, world_size)


def auto_workers(cpus: int, ranks: int, cap: int = MAX_AUTO_WORKERS) -> int:
    """Loader workers per rank when data.num_workers is unset: the `cpus` this machine lets the
    run use, shared by its `ranks` training processes, less one per rank for the training
    process itself; at least 1, at most `cap` (launch/slurm/common.sh sizes SLURM jobs by the
    same rule, without the cap)."""
    return max(1, min(cap, cpus // max(1, ranks) - 1))


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _num_workers(configured: int | None, world_size: int) -> int:
    """data.num_workers, or `auto_workers` of this machine when it is None."""
    if configured is not None:
        return configured
    cpus, ranks = _usable_cpus(), local_ranks(os.environ, world_size)
    workers = auto_workers(cpus, ranks)
    log.info("data.num_workers unset: %d loader workers per rank (%d CPUs, %d ranks on this "
             "machine)", workers, cpus, ranks)
    return workers


def keep_heap_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (call in loader worker processes).

    The augmentations allocate and free many 0.1-20 MB tensors per micro-batch. By default glibc
    serves such sizes with fresh mmap()s or trims them off the heap when freed, so every
    allocation pays page faults that cost more than the arithmetic on it (up to 5x on the hue
    shift). Serving up to 32 MB from the heap and never trimming it removes that cost; the
    worker's resident memory stays at its peak instead. Returns False where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _worker_init(worker_id: int) -> None:
    keep_heap_memory()


class TrainBatches(Iterator[dict[str, Any]]):
    """`build_train_loader`'s micro-batch iterator, plus the number of samples behind it."""

    def __init__(self, batches: Iterator[dict[str, Any]], num_records: int) -> None:
        self.batches, self.num_records = batches, num_records

    def __next__(self) -> dict[str, Any]:
        return next(self.batches)


class _MicroSteps(Sampler[int]):
    """start, start + 1, ... forever."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _open(path: str, key: str, command: str) -> SampleSource:
    from megatron_ego.data.clips import ClipDataset

    if not path or not os.path.isfile(os.path.join(path, "manifest.json")):
        raise FileNotFoundError(
            f"{key}={path!r} is not a preprocessed dataset (no manifest.json): run "
            f"`python -m {command} --out <dir>` first and set {key} to that directory"
        )
    return ClipDataset(path)


def build_train_loader(
    cfg, rank: int, world_size: int, start_micro_step: int = 0
) -> TrainBatches:
    """Micro-batches of one data-parallel rank, forever, from micro-step `start_micro_step` on.

    Args:
        cfg: `megatron_ego.config.Config` (data.*, model sizes, run.seed, run.micro_batch_size).
        rank: this rank's index among the data-parallel ranks.
        world_size: number of data-parallel ranks.
        start_micro_step: the first micro-step to yield (resume: micro-steps already consumed).

    Returns:
        An iterator over micro-batch dicts (module docstring), micro-step start_micro_step,
        start_micro_step + 1, ...; its `num_records` is the number of samples of all sources.

    Raises:
        FileNotFoundError: data.egoexo4d_path (or data.walking_tours_path) is not a
            preprocessed dataset.
    """
    data = cfg.data
    use_walking = bool(data.walking_tours_path) and data.walking_tours_ratio > 0
    sources: dict[str, SampleSource] = {}
    if not use_walking or data.walking_tours_ratio < 1:
        sources[EGOEXO4D] = _open(data.egoexo4d_path, "data.egoexo4d_path", "preprocess.egoexo4d")
    if use_walking:
        sources[WALKING_TOURS] = _open(
            data.walking_tours_path, "data.walking_tours_path", "preprocess.walking_tours"
        )
    dataset = MicroBatchDataset(
        sources,
        MultiCropSpec.from_config(cfg),
        seed=cfg.run.seed,
        rank=rank,
        world_size=world_size,
        micro_batch_size=cfg.run.micro_batch_size,
        grad_accum=max(1, cfg.run.global_batch_size // (cfg.run.micro_batch_size * world_size)),
        walking_tours_ratio=data.walking_tours_ratio if use_walking else 0.0,
        num_steps=cfg.model.num_steps,
        poses_per_step=cfg.model.poses_per_step,
        num_joints=cfg.model.num_joints,
        mix_mode=data.mix_mode,
    )
    workers = _num_workers(data.num_workers, world_size)
    batches = make_loader(dataset, start_micro_step, workers, data.prefetch_factor)
    return TrainBatches(batches, dataset.num_records)


def make_loader(
    dataset: MicroBatchDataset, start_micro_step: int, num_workers: int, prefetch_factor: int = 2
) -> Iterator[dict[str, Any]]:
    """Iterate `dataset` from `start_micro_step` on, forever, through a torch DataLoader.

    Each item is a whole micro-batch, so workers (persistent, each `prefetch_factor` items
    ahead) never split one; the DataLoader returns items in micro-step order, pinned where CUDA
    is available.
    """
    if start_micro_step < 0:
        raise ValueError(f"start_micro_step={start_micro_step} must be >= 0")
    loader = DataLoader(
        dataset,
        batch_size=None,  # each item already is a micro-batch
        sampler=_MicroSteps(start_micro_step),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init,
    )
    return iter(loader)
