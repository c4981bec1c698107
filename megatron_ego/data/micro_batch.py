"""Training micro-batches as the loader's workers build them (loader.py runs them).

    dataset = MicroBatchDataset({"egoexo4d": clips}, spec, seed=0, rank=0, world_size=1,
                                micro_batch_size=8)
    batch = dataset[k]                    # micro-step k of this rank: uint8 images
    batch = to_device(batch, device)      # on_device.py: normalised float32 images

Each DataLoader item is a whole micro-batch: item k is micro-step k, built by `MicroBatchDataset`
from nothing but (seed, k, rank, world_size, grad_accum). Micro-step k of rank r is slot
g = (k mod A) W + r of optimizer step s = k div A (W ranks, A accumulation steps): mix.py picks
the source from s and the samples from (s, g), and every sample's random draws come from a
numpy Generator seeded with (seed, s, g, j). So the stream is the same on any number of workers,
a run restarted at micro-step N yields exactly what an uninterrupted run yields from N on, and
with the same global batch W A b the optimizer steps see the same samples on any number of
ranks (a checkpoint can be resumed on another world size). With A = 1, s = k and g = r.

Ego-Exo4D micro-batch (b clips, T steps, S = model.image_size, s = model.local_crop_size,
V = augment.VIEW_FIELDS):
    source        "egoexo4d"
    frames        uint8 [b, T, 3, S, S]     whole frames resized (no crop, no flip)
    poses         float32 [b, T, 4, P, J]   (x, y, z metres in the camera frame, visibility)
    global_crops  uint8 [b, G, 3, S, S]     DINO global views of the anchor frame t_a (cropped,
                                            resized and flipped; no photometric op yet), cut
                                            from its first crop (data.init_crop_size) if any
    global_views  float64 [b, G, V]         their photometric draws (augment.pack_views)
    local_crops   uint8 [b, L, 3, s, s]     DINO local views of the anchor frame (L may be 0)
    local_views   float64 [b, L, V]
    anchor_step   int64 [b]                 t_a
    index         int64 [b]                 sample indices in the dataset
    bad_records   list[str]                 records that failed to decode (file, index, why)
    drawn         int                       records read (b + the bad ones)
WalkingTours micro-batch: "source" = "walking_tours", global_crops, global_views, local_crops,
local_views, index, bad_records, drawn.

Images leave the workers as uint8 (a quarter of float32's shared memory, pinning and copy);
`on_device.to_device`, where the training process moves a batch to its device, applies the crops'
photometric ops and normalises frames and crops there.

A record that fails to decode (a corrupt JPEG, raw pixels or poses of the wrong size, non-finite
poses) is replaced by the next sample of the dataset (index + 1, + 2, ...: deterministic, so
resume stays exact) and named in `bad_records`; the trainer logs and counts them
(data.max_bad_record_share). A slot whose every try fails is all black (zero pixels, views
without photometric ops), every try counted.

data.mix_mode="within_batch" (`SampleShares`): micro-step k holds e Ego-Exo4D clips and w
WalkingTours frames on every rank (e + w = b). With both, the batch is "source" = "mixed":
frames, poses and anchor_step of the e clips; global_crops, global_views, local_crops,
local_views and index of all b samples, the e clips' first; "counts" = {"egoexo4d": e,
"walking_tours": w}; and "sequence_share" = e / b (the objective weighs the predict and act
terms by it, so that each sample counts as in the homogeneous mode). Every batch carries "counts".
"""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from megatron_ego.data.augment import (
    IDENTITY_VIEW,
    VIEW_FIELDS,
    MultiCropSpec,
    ViewParams,
    crop_views,
    draw_init_crop,
    draw_multicrop,
    init_crop,
    min_decode_size,
    pack_views,
    view_frame_size,
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

__all__ = ["BadRecord", "MicroBatchDataset", "SampleSource", "sample_rng"]


DECODE_ERRORS = (OSError, RuntimeError, ValueError)
"""What a damaged record raises: PIL (OSError: truncated, unidentified image), torchvision's
decoder (RuntimeError), numpy reshapes of raw frames or poses of the wrong size (ValueError)."""
MAX_FALLBACKS = 8
"""Samples tried in place of one bad record; a slot whose tries all fail is blank (and
every try counted, so a broken dataset stops the run at the next step)."""


_FrameViews = tuple[tuple[int, int, int, int] | None, tuple[list[ViewParams], list[ViewParams]]]
"""One frame's first-crop box (None without one) and its (global, local) views."""


class BadRecord(Exception):
    """One record failed to decode; the message names the file, the record and the error."""


class SampleSource(Protocol):
    """What the loader needs of a dataset: `megatron_ego.data.clips.ClipDataset` is one."""

    encoding: str
    frame_size: tuple[int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RawClip: ...


def _empty(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Tensor of `shape`; inside a DataLoader worker it is allocated in shared memory (as torch's
    default_collate does), so that handing it to the main process copies nothing."""
    if get_worker_info() is None or math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    size = torch.empty(0, dtype=dtype).element_size() * math.prod(shape)
    storage = torch.UntypedStorage._new_shared(size)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


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
        crops = {k: torch.cat([ego[k], walk[k]])
                 for k in ("global_crops", "global_views", "local_crops", "local_views", "index")}
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

    def _crop_outputs(self, b: int) -> dict[str, torch.Tensor]:
        """The crops and their packed views, to be filled sample by sample."""
        spec = self.spec
        G, L = spec.num_global, spec.num_local
        return {
            "global_crops": _empty(b, G, 3, spec.global_size, spec.global_size),  # [b, G, 3, S, S]
            "global_views": _empty(b, G, VIEW_FIELDS, dtype=torch.float64),  # [b, G, V]
            "local_crops": _empty(b, L, 3, spec.local_size, spec.local_size),  # [b, L, 3, s, s]
            "local_views": _empty(b, L, VIEW_FIELDS, dtype=torch.float64),  # [b, L, V]
        }

    @staticmethod
    def _blank(crops: dict[str, torch.Tensor], j: int) -> None:
        """Sample j's crops all black, its views without photometric ops."""
        for key, out in crops.items():
            out[j] = torch.tensor(IDENTITY_VIEW) if key.endswith("_views") else 0

    def _draw(self, rng: np.random.Generator, frame_size: tuple[int, int]) -> _FrameViews:
        """One frame's first crop (data.init_crop_size; None without) and its views, drawn in
        that order (DoRA's)."""
        init = draw_init_crop(rng, frame_size, self.spec)
        return init, draw_multicrop(rng, view_frame_size(self.spec, frame_size), self.spec)

    def _decode_size(self, drawn: _FrameViews, frame_size: tuple[int, int]) -> tuple[int, int]:
        """Smallest decoded (h, w) that loses nothing the first crop (or, without one, the
        views) keeps."""
        spec = self.spec
        init, views = drawn
        if init is not None:
            return min_decode_size([(init, spec.init_size)], frame_size)
        need = [(v, spec.global_size) for v in views[0]] + [(v, spec.local_size) for v in views[1]]
        return min_decode_size(need, frame_size)

    def _views(
        self,
        image: torch.Tensor,
        drawn: _FrameViews,
        frame_size: tuple[int, int],
        crops: dict[str, torch.Tensor],
        j: int,
    ) -> None:
        """Cut one frame's views (from its first crop, if any) into sample j of `crops` (uint8),
        with their packed draws."""
        init, views = drawn
        source = init_crop(image, init, self.spec.init_size, frame_size)  # uint8 [3, h, w]
        source_size = view_frame_size(self.spec, frame_size)
        for kind, chosen, size in (("global", views[0], self.spec.global_size),
                                   ("local", views[1], self.spec.local_size)):
            if chosen:
                crop_views(source, chosen, size, source_size, out=crops[f"{kind}_crops"][j])
                crops[f"{kind}_views"][j] = torch.from_numpy(pack_views(chosen))

    def _egoexo4d(
        self, indices: np.ndarray, rngs: list[np.random.Generator], bad: list[str]
    ) -> dict[str, Any]:
        dataset, spec = self.sources[EGOEXO4D], self.spec
        b, T, S = len(indices), self.num_steps, spec.global_size
        P, J = self.poses_per_step, self.num_joints
        frame_size = dataset.frame_size
        frames = _empty(b, T, 3, S, S)  # [b, T, 3, S, S]
        poses = torch.empty(b, T, 4, P, J)  # [b, T, 4, P, J]
        crops = self._crop_outputs(b)
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
            views = self._draw(rng, frame_size)
            crop_h, crop_w = self._decode_size(views, frame_size)
            for t, frame in enumerate(clip.frames):
                need = (max(S, crop_h), max(S, crop_w)) if t == anchor else (S, S)
                try:
                    image = decode_rgb(frame, dataset.encoding, need, frame_size)  # [3, h, w]
                except DECODE_ERRORS as err:
                    record = clip.frame_ids[t] if clip.frame_ids else f"? (step {t})"
                    raise BadRecord(
                        f"{where}/frames.bin record {record} (clip {index}): {err}") from err
                frames[j, t] = resize_frames(image, S)[0]
                if t == anchor:
                    self._views(image, views, frame_size, crops, j)
            stored = torch.from_numpy(np.array(clip.poses, dtype=np.float32))  # [T*P, J, 4]
            poses[j] = stored.view(T, P, J, 4).permute(0, 3, 1, 2)  # [T, 4, P, J]
            anchors[j] = anchor

        for j, (index, rng) in enumerate(zip(indices, rngs)):
            used = self._first_good(dataset, int(index), functools.partial(fill, j, rng), bad)
            if used < 0:  # every try failed: an all-black sample, counted
                frames[j], poses[j], anchors[j] = 0, 0, 0
                self._blank(crops, j)
            indices[j] = used if used >= 0 else indices[j]
        return {
            "source": EGOEXO4D,
            "frames": frames,
            "poses": poses,
            **crops,
            "anchor_step": anchors,
            "index": torch.from_numpy(indices),
        }

    def _walking_tours(
        self, indices: np.ndarray, rngs: list[np.random.Generator], bad: list[str]
    ) -> dict[str, Any]:
        dataset = self.sources[WALKING_TOURS]
        frame_size = dataset.frame_size
        crops = self._crop_outputs(len(indices))
        where = getattr(dataset, "path", WALKING_TOURS)

        def fill(j: int, rng: np.random.Generator, index: int) -> None:
            views = self._draw(rng, frame_size)
            need = self._decode_size(views, frame_size)
            try:
                frame = dataset[index].frames[0]
                image = decode_rgb(frame, dataset.encoding, need, frame_size)  # [3, h, w]
            except DECODE_ERRORS as err:
                raise BadRecord(f"{where}/frames.bin record {index}: {err}") from err
            self._views(image, views, frame_size, crops, j)

        for j, (index, rng) in enumerate(zip(indices, rngs)):
            used = self._first_good(dataset, int(index), functools.partial(fill, j, rng), bad)
            if used < 0:
                self._blank(crops, j)
            indices[j] = used if used >= 0 else indices[j]
        return {
            "source": WALKING_TOURS,
            **crops,
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
