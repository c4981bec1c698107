"""Training micro-batches: what the trainer consumes.

    loader = build_train_loader(cfg, rank, world_size, start_micro_step=N)
    batch = next(loader)   # micro-step N of this rank

Each DataLoader item is a whole micro-batch: item k is micro-step k, built by `MicroBatchDataset`
from nothing but (seed, k, rank, world_size, grad_accum). Micro-step k of rank r is slot
g = (k mod A) W + r of optimizer step s = k div A (W ranks, A accumulation steps): mix.py picks
the source from s and the samples from (s, g), and every sample's random draws come from a
numpy Generator seeded with (seed, s, g, j). So the stream is the same on any number of workers,
a run restarted at micro-step N yields exactly what an uninterrupted run yields from N on, and
with the same global batch W A b the optimizer steps see the same samples on any number of
ranks (a checkpoint can be resumed on another world size). With A = 1, s = k and g = r.

Ego-Exo4D micro-batch (b clips, T steps, S = model.image_size, s = model.local_crop_size):
    source        "egoexo4d"
    frames        float32 [b, T, 3, S, S]   whole frames resized (no crop, no flip), normalised
    poses         float32 [b, T, 4, P, J]   (x, y, z metres in the camera frame, visibility)
    global_crops  float32 [b, G, 3, S, S]   DINO global views of the anchor frame t_a
    local_crops   float32 [b, L, 3, s, s]   DINO local views of the anchor frame (L may be 0)
    anchor_step   int64 [b]                 t_a
    index         int64 [b]                 sample indices in the dataset
    bad_records   list[str]                 records that failed to decode (file, index, why)
    drawn         int                       records read (b + the bad ones)
WalkingTours micro-batch: "source" = "walking_tours", global_crops, local_crops, index,
bad_records, drawn.

A record that fails to decode (a corrupt JPEG, raw pixels or poses of the wrong size, non-finite
poses) is replaced by the next sample of the dataset (index + 1, + 2, ...: deterministic, so
resume stays exact) and named in `bad_records`; the trainer logs and counts them
(data.max_bad_record_share).

data.mix_mode="within_batch" (`SampleShares`): micro-step k holds e Ego-Exo4D clips and w
WalkingTours frames on every rank (e + w = b). With both, the batch is "source" = "mixed":
frames, poses and anchor_step of the e clips; global_crops, local_crops and index of all b
samples, the e clips' first; "counts" = {"egoexo4d": e, "walking_tours": w}; and
"sequence_share" = e / b (the objective weighs the predict and act terms by it, so that each
sample counts as in the homogeneous mode). Every batch carries "counts".
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from megatron_ego.data.augment import (
    MultiCropSpec,
    ViewParams,
    crop_views,
    draw_multicrop,
    min_decode_size,
)
from megatron_ego.data.clips import RawClip
from megatron_ego.data.decode import decode_rgb, resize_frames
from megatron_ego.data.mix import (
    EGOEXO4D,
    WALKING_TOURS,
    EpochOrder,
    SampleShares,
    SourceSchedule,
)
from megatron_ego.data.photometric import normalize_into, photometric, warm_up

__all__ = [
    "BadRecord",
    "MicroBatchDataset",
    "SampleSource",
    "TrainBatches",
    "build_train_loader",
    "keep_heap_memory",
    "make_loader",
    "sample_rng",
]


DECODE_ERRORS = (OSError, RuntimeError, ValueError)
"""What a damaged record raises: PIL (OSError: truncated, unidentified image), torchvision's
decoder (RuntimeError), numpy reshapes of raw frames or poses of the wrong size (ValueError)."""
MAX_FALLBACKS = 8
"""Samples tried in place of one bad record; a slot whose tries all fail is zero-filled (and
every try counted, so a broken dataset stops the run at the next step)."""


class BadRecord(Exception):
    """One record failed to decode; the message names the file, the record and the error."""


class SampleSource(Protocol):
    """What the loader needs of a dataset: `megatron_ego.data.clips.ClipDataset` is one."""

    encoding: str
    frame_size: tuple[int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RawClip: ...


def _empty(*shape: int) -> torch.Tensor:
    """float32 tensor of `shape`; inside a DataLoader worker it is allocated in shared memory
    (as torch's default_collate does), so that handing it to the main process copies nothing."""
    if get_worker_info() is None or math.prod(shape) == 0:
        return torch.empty(shape)
    storage = torch.UntypedStorage._new_shared(4 * math.prod(shape))
    return torch.empty(0).set_(storage, 0, shape)


def sample_rng(seed: int, step: int, slot: int, sample: int) -> np.random.Generator:
    """The random stream of sample `sample` of micro-batch `slot` of optimizer step `step`
    (with one accumulation step: micro-step `step` on rank `slot`)."""
    return np.random.default_rng([int(seed) % 2**64, step, slot, sample])


class MicroBatchDataset(Dataset):
    """Map-style dataset whose item k is micro-step k of one rank: a whole micro-batch.

    Args:
        sources: {"egoexo4d": dataset, "walking_tours": dataset}; a missing key = source unused.
        spec: the multi-crop sizes, counts and scales.
        seed: cfg.run.seed.
        rank, world_size: this data-parallel rank and the number of ranks.
        micro_batch_size: samples per micro-batch b.
        grad_accum: micro-steps per optimizer step A (global batch = world_size A b).
        walking_tours_ratio: P(a micro-step is WalkingTours); forced to 0 without that source.
        num_steps, poses_per_step, num_joints: T, P and J of the model (Ego-Exo4D clips
            must match).
        mix_mode: "micro_step" (one source per micro-step) or "within_batch" (both in each).
    """

    def __init__(
        self,
        sources: dict[str, SampleSource],
        spec: MultiCropSpec,
        *,
        seed: int,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        grad_accum: int = 1,
        walking_tours_ratio: float = 0.0,
        num_steps: int = 4,
        poses_per_step: int = 5,
        num_joints: int = 17,
        mix_mode: str = "micro_step",
    ) -> None:
        if mix_mode not in ("micro_step", "within_batch"):
            raise ValueError(f"mix_mode={mix_mode!r}: expected 'micro_step' or 'within_batch'")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        ratio = walking_tours_ratio if WALKING_TOURS in sources else 0.0
        if ratio < 1.0 and EGOEXO4D not in sources:
            raise ValueError("Ego-Exo4D micro-batches are drawn but no Ego-Exo4D dataset was given")
        self.sources, self.spec = sources, spec
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        slots = world_size * grad_accum  # micro-batches per optimizer step
        self.num_steps, self.poses_per_step, self.num_joints = num_steps, poses_per_step, num_joints
        self.schedule = SourceSchedule(seed, ratio)
        self.shares = (SampleShares(ratio, micro_batch_size, world_size)
                       if mix_mode == "within_batch" else None)
        self.orders = {
            name: EpochOrder(len(ds), seed, name, slots, micro_batch_size)
            for name, ds in sources.items()
        }

    def __getitem__(self, micro_step: int) -> dict[str, Any]:
        if self.shares is not None:
            return self._mixed(int(micro_step))
        step, accum = divmod(int(micro_step), self.grad_accum)
        slot = accum * self.world_size + self.rank  # place in the global batch of `step`
        source, n = self.schedule.position(step)
        indices = self.orders[source].indices(n, slot)  # int64 [b]
        rngs = [sample_rng(self.seed, step, slot, j) for j in range(len(indices))]
        bad: list[str] = []
        build = self._egoexo4d if source == EGOEXO4D else self._walking_tours
        batch = build(indices, rngs, bad)
        return {**batch, "counts": {source: len(indices)}, "bad_records": bad,
                "drawn": len(indices) + len(bad)}

    def _mixed(self, micro_step: int) -> dict[str, Any]:
        """data.mix_mode="within_batch": both sources' samples of this micro-step, merged."""
        rngs = [sample_rng(self.seed, micro_step, self.rank, j)
                for j in range(self.micro_batch_size)]
        counts = self.shares.counts(micro_step)
        parts, bad = {}, []
        for source, build in ((EGOEXO4D, self._egoexo4d), (WALKING_TOURS, self._walking_tours)):
            if counts[source]:
                start, count = self.shares.span(micro_step, self.rank, source)
                indices = self.orders[source].positions(start, count)  # int64 [count]
                parts[source] = build(indices, rngs[:count], bad)
                rngs = rngs[count:]
        extra = {"counts": counts, "bad_records": bad, "drawn": self.micro_batch_size + len(bad)}
        if len(parts) == 1:
            (only,) = parts.values()
            return {**only, **extra}
        ego, walk = parts[EGOEXO4D], parts[WALKING_TOURS]
        crops = {k: torch.cat([ego[k], walk[k]]) for k in ("global_crops", "local_crops", "index")}
        return {**ego, **crops, **extra, "source": "mixed",
                "sequence_share": counts[EGOEXO4D] / self.micro_batch_size}

    @property
    def num_records(self) -> int:
        """Samples over all sources (the scale of data.max_bad_record_share early in a run)."""
        return sum(len(ds) for ds in self.sources.values())

    def _first_good(self, dataset: SampleSource, index: int, fill, bad: list[str]) -> int:
        """Run `fill(i)` for i = index, index + 1, ... until one decodes; each failure is
        appended to `bad`. Returns the index used, or -1 when MAX_FALLBACKS tries failed."""
        for attempt in range(MAX_FALLBACKS):
            i = (index + attempt) % len(dataset)
            try:
                fill(i)
                return i
            except BadRecord as err:
                bad.append(str(err))
        return -1

    def _crop_outputs(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        g = _empty(b, spec.num_global, 3, spec.global_size, spec.global_size)
        local = _empty(b, spec.num_local, 3, spec.local_size, spec.local_size)
        return g, local  # [b, G, 3, S, S], [b, L, 3, s, s]

    def _decode_size(
        self, views: tuple[list[ViewParams], list[ViewParams]], frame_size: tuple[int, int]
    ) -> tuple[int, int]:
        """Smallest decoded (h, w) that loses nothing the views keep."""
        spec = self.spec
        need = [(v, spec.global_size) for v in views[0]] + [(v, spec.local_size) for v in views[1]]
        return min_decode_size(need, frame_size)

    def _views(
        self,
        image: torch.Tensor,
        views: tuple[list[ViewParams], list[ViewParams]],
        frame_size: tuple[int, int],
        out_g: torch.Tensor,
        out_l: torch.Tensor,
    ) -> None:
        """Cut and augment one frame's views into out_g [G, 3, S, S] and out_l [L, 3, s, s]."""
        views_g, views_l = views
        spec = self.spec
        photometric(crop_views(image, views_g, spec.global_size, frame_size), views_g, out=out_g)
        if views_l:
            crops = crop_views(image, views_l, spec.local_size, frame_size)  # [L, 3, s, s]
            photometric(crops, views_l, out=out_l)

    def _egoexo4d(
        self, indices: np.ndarray, rngs: list[np.random.Generator], bad: list[str]
    ) -> dict[str, Any]:
        dataset, spec = self.sources[EGOEXO4D], self.spec
        b, T, S = len(indices), self.num_steps, spec.global_size
        P, J = self.poses_per_step, self.num_joints
        frame_size = dataset.frame_size
        frames = _empty(b, T, 3, S, S)  # [b, T, 3, S, S]
        poses = torch.empty(b, T, 4, P, J)  # [b, T, 4, P, J]
        global_crops, local_crops = self._crop_outputs(b)
        anchors = torch.empty(b, dtype=torch.int64)
        where = getattr(dataset, "path", EGOEXO4D)

        def fill(j: int, rng: np.random.Generator, index: int) -> None:
            try:
                clip = dataset[index]
            except DECODE_ERRORS as err:
                raise BadRecord(f"{where} clip {index} (poses.bin / clips.bin): {err}") from err
            self._check_clip(clip, index)  # a config mismatch is not a bad record
            if not np.isfinite(clip.poses).all():
                raise BadRecord(f"{where}/poses.bin record {index}: non-finite poses")
            anchor = int(rng.integers(T))
            views = draw_multicrop(rng, frame_size, spec)
            crop_h, crop_w = self._decode_size(views, frame_size)
            whole = torch.empty(T, 3, S, S, dtype=torch.uint8)  # [T, 3, S, S]
            for t, frame in enumerate(clip.frames):
                need = (max(S, crop_h), max(S, crop_w)) if t == anchor else (S, S)
                try:
                    image = decode_rgb(frame, dataset.encoding, need, frame_size)  # [3, h, w]
                except DECODE_ERRORS as err:
                    record = clip.frame_ids[t] if clip.frame_ids else f"? (step {t})"
                    raise BadRecord(
                        f"{where}/frames.bin record {record} (clip {index}): {err}") from err
                whole[t] = resize_frames(image, S)[0]
                if t == anchor:
                    self._views(image, views, frame_size, global_crops[j], local_crops[j])
            normalize_into(whole, frames[j])
            stored = torch.from_numpy(np.array(clip.poses, dtype=np.float32))  # [T*P, J, 4]
            poses[j] = stored.view(T, P, J, 4).permute(0, 3, 1, 2)  # [T, 4, P, J]
            anchors[j] = anchor

        for j, (index, rng) in enumerate(zip(indices, rngs)):
            used = self._first_good(dataset, int(index), functools.partial(fill, j, rng), bad)
            if used < 0:  # every try failed: an all-zero sample, counted
                for out in (frames[j], poses[j], global_crops[j], local_crops[j]):
                    out.zero_()
                anchors[j] = 0
            indices[j] = used if used >= 0 else indices[j]
        return {
            "source": EGOEXO4D,
            "frames": frames,
            "poses": poses,
            "global_crops": global_crops,
            "local_crops": local_crops,
            "anchor_step": anchors,
            "index": torch.from_numpy(indices),
        }

    def _walking_tours(
        self, indices: np.ndarray, rngs: list[np.random.Generator], bad: list[str]
    ) -> dict[str, Any]:
        dataset, spec = self.sources[WALKING_TOURS], self.spec
        frame_size = dataset.frame_size
        global_crops, local_crops = self._crop_outputs(len(indices))
        where = getattr(dataset, "path", WALKING_TOURS)

        def fill(j: int, rng: np.random.Generator, index: int) -> None:
            views = draw_multicrop(rng, frame_size, spec)
            need = self._decode_size(views, frame_size)
            try:
                frame = dataset[index].frames[0]
                image = decode_rgb(frame, dataset.encoding, need, frame_size)  # [3, h, w]
            except DECODE_ERRORS as err:
                raise BadRecord(f"{where}/frames.bin record {index}: {err}") from err
            self._views(image, views, frame_size, global_crops[j], local_crops[j])

        for j, (index, rng) in enumerate(zip(indices, rngs)):
            used = self._first_good(dataset, int(index), functools.partial(fill, j, rng), bad)
            if used < 0:
                global_crops[j].zero_()
                local_crops[j].zero_()
            indices[j] = used if used >= 0 else indices[j]
        return {
            "source": WALKING_TOURS,
            "global_crops": global_crops,
            "local_crops": local_crops,
            "index": torch.from_numpy(indices),
        }

    def _check_clip(self, clip: RawClip, index: int) -> None:
        T, P, J = self.num_steps, self.poses_per_step, self.num_joints
        poses = None if clip.poses is None else tuple(clip.poses.shape)
        if len(clip.frames) != T or poses != (T * P, J, 4):
            raise ValueError(
                f"Ego-Exo4D clip {index} has {len(clip.frames)} frames and poses of shape "
                f"{poses}, but the config wants model.num_steps={T} frames and poses of shape "
                f"({T * P}, model.num_joints={J}, 4): re-run `python -m preprocess.egoexo4d` "
                f"with matching options or fix the config"
            )


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
    batches = make_loader(dataset, start_micro_step, data.num_workers, data.prefetch_factor)
    return TrainBatches(batches, dataset.num_records)


def make_loader(
    dataset: MicroBatchDataset, start_micro_step: int, num_workers: int, prefetch_factor: int = 2
) -> Iterator[dict[str, Any]]:
    """Iterate `dataset` from `start_micro_step` on, forever, through a torch DataLoader.

    Each item is a whole micro-batch, so workers (persistent, each `prefetch_factor` items
    ahead) never split one; the DataLoader returns items in micro-step order.
    """
    if start_micro_step < 0:
        raise ValueError(f"start_micro_step={start_micro_step} must be >= 0")
    if num_workers > 0:
        warm_up()  # compiled once here, inherited by the forked workers
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
