"""Loader throughput per CPU core: our micro-batch builder vs DINO's torchvision/PIL pipeline.

    .venv/bin/python bench/loader.py                     # 256-px JPEG frames, 5 repetitions
    .venv/bin/python bench/loader.py --frame-size 448 --reps 7 --json out.json

One process, torch.set_num_threads(1): the numbers are per core (a DataLoader worker is one).
Both pipelines start from the same stored JPEG frames (natural images from scikit-image's bundled
samples, resized to --frame-size and JPEG-encoded at quality 90) and produce the same tensors:

- clip (Ego-Exo4D micro-batch): T=4 frames decoded; each resized whole to 224 and normalised;
  one anchor frame gives 2 global views (224, scale 0.4-1) and 6 local views (112, scale
  0.05-0.4) with DINO's augmentations; poses reshaped. Reference: PIL decode of the 4 frames,
  torchvision Resize((224, 224)) + ToTensor + Normalize on each, and DINO's
  DataAugmentationDINO (main_dino.py: RandomResizedCrop bicubic, flip, ColorJitter p=0.8,
  RandomGrayscale, PIL GaussianBlur, PIL solarize, ToTensor + Normalize) on the anchor, stacked
  into a micro-batch. Ours: `MicroBatchDataset` (megatron_ego/data/loader.py) Ego-Exo4D items.
- frame (WalkingTours micro-batch, multi-crop only): one frame decoded, 2 + 6 views. Reference:
  PIL decode + DataAugmentationDINO. Ours: `MicroBatchDataset` WalkingTours items.

Repetitions alternate ours and the reference, so that load from other processes on a shared
machine hits both alike; the report gives the median rate of each and the median of the
per-repetition ratios.

Ours is the worker's micro-batch (`MicroBatchDataset`: uint8 images) and the training process's
`to_device` on the CPU (photometric ops and normalisation: on_device.py), so that both sides end
with the same normalised float32 tensors.

--init-crop 300 times ours with the first crop (data.init_crop_size: DoRA's and the release's
300 px crop that every view is cut from) against ours without it, alternating, and reports the
per-repetition ratios (with / without: below 1 means the first crop costs time);
--frame-width W stores W x --frame-size frames (e.g. 796 x 448, WalkingTours' 16:9 at 448 px);
--other-size H [--other-width W] compares the first crop on those frames against it on H-high
ones instead (the cost of a larger stored size).

--profile prints where our clip pipeline spends its time (cProfile, 3 micro-batches).
--workers 1,4,8 also measures what one rank's DataLoader delivers (`make_loader`, persistent
workers, Ego-Exo4D micro-batches), in clips/s over all its worker processes, after a warm-up;
with --device-stage the training process also runs `to_device` on every micro-batch (on the GPU
where there is one, else on the CPU). bench/loader_compare.py runs --workers against older code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from megatron_ego.cli_help import make_parser
from megatron_ego.data.augment import MultiCropSpec
from megatron_ego.data.clips import RawClip
from megatron_ego.data.decode import IMAGENET_MEAN, IMAGENET_STD
from megatron_ego.data.loader import MicroBatchDataset, keep_heap_memory, make_loader
from megatron_ego.data.mix import EGOEXO4D, WALKING_TOURS
from megatron_ego.data.on_device import to_device

NUM_STEPS, POSES, JOINTS = 4, 20, 17
CPU = torch.device("cpu")


def stored_frames(size: int, width: int = 0) -> list[np.ndarray]:
    """Natural images as 1-D JPEG buffers of size x size pixels (or `width` x size; quality 90)."""
    import skimage.data

    width = width or size
    frames = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)())
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((width, size), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        frames.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    return frames


class MemoryClips:
    """In-memory stand-in for ClipDataset: `count` clips (or single frames) of stored JPEGs."""

    encoding = "jpeg"

    def __init__(self, frames: list[np.ndarray], size: int, count: int, clips: bool,
                 width: int = 0) -> None:
        self.frames, self.count, self.clips = frames, count, clips
        self.frame_size = (size, width or size)
        self.poses = np.random.default_rng(0).standard_normal((POSES, JOINTS, 4)).astype(np.float32)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> RawClip:
        n = len(self.frames)
        if not self.clips:
            return RawClip([self.frames[i % n]], None, "bench", i)
        return RawClip([self.frames[(i + t) % n] for t in range(NUM_STEPS)], self.poses, "bench", i)


class DinoReference:
    """DINO's DataAugmentationDINO written with torchvision transforms on PIL images."""

    def __init__(self, spec: MultiCropSpec) -> None:
        flip_and_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        bicubic = T.InterpolationMode.BICUBIC

        def crop(size, scale):
            return T.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        g, loc = spec.global_size, spec.local_size
        self.global1 = T.Compose([crop(g, spec.global_scale), flip_and_jitter, _blur(1.0), norm])
        self.global2 = T.Compose(
            [crop(g, spec.global_scale), flip_and_jitter, _blur(0.1), _solarize(0.2), norm]
        )
        self.local = T.Compose([crop(loc, spec.local_scale), flip_and_jitter, _blur(0.5), norm])
        self.whole = T.Compose([T.Resize((g, g)), norm])
        self.num_local = spec.num_local

    def views(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        crops_l = [self.local(image) for _ in range(self.num_local)]
        return torch.stack([self.global1(image), self.global2(image)]), torch.stack(crops_l)

    def clip(self, clip: RawClip, anchor: int) -> dict[str, torch.Tensor]:
        images = [_pil(f) for f in clip.frames]
        frames = torch.stack([self.whole(im) for im in images])  # [T, 3, S, S]
        crops_g, crops_l = self.views(images[anchor])
        poses = torch.from_numpy(clip.poses).view(NUM_STEPS, 5, JOINTS, 4).permute(0, 3, 1, 2)
        return {"frames": frames, "poses": poses, "global_crops": crops_g, "local_crops": crops_l}

    def frame(self, clip: RawClip) -> dict[str, torch.Tensor]:
        crops_g, crops_l = self.views(_pil(clip.frames[0]))
        return {"global_crops": crops_g, "local_crops": crops_l}


def _pil(frame: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(frame.tobytes())).convert("RGB")


def _blur(p: float):
    def blur(image):  # DINO's GaussianBlur: PIL filter, radius uniform in [0.1, 2]
        if random.random() <= p:
            return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return image

    return blur


def _solarize(p: float):
    def solarize(image):
        return ImageOps.solarize(image) if random.random() < p else image

    return solarize


def reference_batches(ref: DinoReference, source: MemoryClips, b: int, steps: int) -> None:
    """`steps` micro-batches of b samples through the reference, stacked like a collate."""
    for k in range(steps):
        samples = []
        for j in range(b):
            clip = source[k * b + j]
            samples.append(ref.clip(clip, anchor=j % NUM_STEPS) if source.clips else ref.frame(clip))
        {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def ours_batches(dataset: MicroBatchDataset, start: int, steps: int) -> None:
    for k in range(start, start + steps):
        to_device(dataset[k], CPU)


def timed(fn, *args, clock=time.perf_counter) -> float:
    start = clock()
    fn(*args)
    return clock() - start


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(kind: str, args, frames: list[np.ndarray], spec: MultiCropSpec) -> dict:
    clips = kind == "clip"
    source = MemoryClips(frames, args.frame_size, 10_000, clips=clips, width=args.frame_width)
    name = EGOEXO4D if clips else WALKING_TOURS
    dataset = MicroBatchDataset(
        {name: source}, spec, seed=0, rank=0, world_size=1, micro_batch_size=args.micro_batch,
        walking_tours_ratio=0.0 if clips else 1.0,
    )
    ref = DinoReference(spec)
    random.seed(0)
    torch.manual_seed(0)
    ours_batches(dataset, 0, 1)  # warm-up (first-call allocations, lazy imports)
    reference_batches(ref, source, args.micro_batch, 1)
    samples = args.steps * args.micro_batch
    ours, theirs = [], []
    for rep in range(args.reps):
        ours.append(samples / timed(ours_batches, dataset, 1 + rep * args.steps, args.steps))
        theirs.append(samples / timed(reference_batches, ref, source, args.micro_batch, args.steps))
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {
        "ours_per_s": statistics.median(ours),
        "reference_per_s": statistics.median(theirs),
        "ratio_median": statistics.median(ratios),
        "ratios": [round(r, 2) for r in ratios],
    }


def first_crop_cost(kind: str, args, spec: MultiCropSpec) -> dict:
    """Ours with the first crop (spec.init_size = --init-crop) on --frame-size frames against
    ours without it on the same frames (or, with --other-size, with it on frames of that size),
    alternating: samples per CPU-second of this process (time.process_time: one thread, so other
    jobs on a shared machine slow both alike but are not counted) of each (median), and the
    per-repetition ratios first / second."""
    clips = kind == "clip"
    name = EGOEXO4D if clips else WALKING_TOURS
    other = (args.other_size, args.other_width, args.init_crop) if args.other_size else \
        (args.frame_size, args.frame_width, 0)
    datasets = []
    for size, width, init in ((args.frame_size, args.frame_width, args.init_crop), other):
        source = MemoryClips(stored_frames(size, width), size, 10_000, clips=clips, width=width)
        datasets.append(MicroBatchDataset(
            {name: source}, dataclasses.replace(spec, init_size=init), seed=0, rank=0,
            world_size=1, micro_batch_size=args.micro_batch,
            walking_tours_ratio=0.0 if clips else 1.0))
    for dataset in datasets:
        ours_batches(dataset, 0, 1)  # warm-up
    samples = args.steps * args.micro_batch
    rates: list[list[float]] = [[], []]
    for rep in range(args.reps):
        for rate, dataset in zip(rates, datasets):
            rate.append(samples / timed(ours_batches, dataset, 1 + rep * args.steps, args.steps,
                                        clock=time.process_time))
    ratios = [a / b for a, b in zip(*rates)]
    return {"first_per_s": statistics.median(rates[0]), "second_per_s": statistics.median(rates[1]),
            "ratio_median": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios]}


def loader_rate(args, frames: list[np.ndarray], spec: MultiCropSpec, workers: int) -> float:
    """Clips/s that `make_loader` delivers with `workers` processes (after a warm-up)."""
    source = MemoryClips(frames, args.frame_size, 100_000, clips=True)
    dataset = MicroBatchDataset(
        {EGOEXO4D: source}, spec, seed=0, rank=0, world_size=1, micro_batch_size=args.micro_batch
    )
    loader = make_loader(dataset, 0, num_workers=workers, prefetch_factor=2)
    device = torch.device("cuda") if torch.cuda.is_available() else CPU
    stage = getattr(args, "device_stage", False)
    for _ in range(2 * workers):  # workers started, first batches queued
        batch = next(loader)
        if stage:
            to_device(batch, device)
    steps = max(4 * workers, args.steps)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(loader)
        if stage:
            to_device(batch, device)
    if torch.cuda.is_available():  # pinned by the loader: the copy to the GPU can overlap
        assert batch["frames"].is_pinned()
        to_device(batch, device)
        torch.cuda.synchronize()
    del loader
    return steps * args.micro_batch / (time.perf_counter() - start)


def profile(args, frames: list[np.ndarray], spec: MultiCropSpec) -> None:
    """cProfile of 3 Ego-Exo4D micro-batches of ours: the top functions by own time."""
    import cProfile
    import pstats

    source = MemoryClips(frames, args.frame_size, 10_000, clips=True)
    dataset = MicroBatchDataset(
        {EGOEXO4D: source}, spec, seed=0, rank=0, world_size=1, micro_batch_size=args.micro_batch
    )
    ours_batches(dataset, 0, 1)  # warm-up
    profiler = cProfile.Profile()
    profiler.runcall(ours_batches, dataset, 1, 3)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--frame-size", type=int, default=256, help="stored frame side (px)")
    parser.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    parser.add_argument("--steps", type=int, default=4, help="micro-batches per repetition")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per micro-batch")
    parser.add_argument("--profile", action="store_true", help="only profile ours (cProfile)")
    parser.add_argument("--workers", default="", help="e.g. 1,4,8: DataLoader clips/s with them")
    parser.add_argument("--device-stage", action="store_true",
                        help="with --workers: run to_device on every delivered micro-batch")
    parser.add_argument("--init-crop", type=int, default=0,
                        help="only time ours with this first crop against ours without it")
    parser.add_argument("--frame-width", type=int, default=0,
                        help="stored frame width (px); 0 = --frame-size (square)")
    parser.add_argument("--other-size", type=int, default=0,
                        help="with --init-crop: compare against the first crop on frames of "
                             "this height instead of no first crop")
    parser.add_argument("--other-width", type=int, default=0,
                        help="width of the --other-size frames; 0 = square")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    heap = keep_heap_memory()  # as in our DataLoader workers; applies to both pipelines
    spec = MultiCropSpec(global_size=224, local_size=112, num_global=2, num_local=6)
    frames = stored_frames(args.frame_size, args.frame_width)
    if args.profile:
        return profile(args, frames, spec)
    if args.init_crop:
        first = f"{args.frame_width or args.frame_size} x {args.frame_size} px"
        second = (f"{args.other_width or args.other_size} x {args.other_size} px, with it"
                  if args.other_size else f"{first}, without it")
        for kind in ("clip", "frame"):
            r = first_crop_cost(kind, args, spec)
            print(f"{kind:5s} per core: {first} with the {args.init_crop} px first crop "
                  f"{r['first_per_s']:6.1f}/CPU-s; {second} {r['second_per_s']:6.1f}/CPU-s; "
                  f"ratio (median of reps) {r['ratio_median']:.3f}, reps {r['ratios']}",
                  flush=True)
        return None
    result = {
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "keep_heap_memory": heap,
        "frame_size": args.frame_size,
        "micro_batch": args.micro_batch,
        "samples_per_rep": args.steps * args.micro_batch,
        "reps": args.reps,
    }
    for kind in ("clip", "frame"):
        result[kind] = run(kind, args, frames, spec)
        r = result[kind]
        print(
            f"{kind:5s} per core: ours {r['ours_per_s']:7.1f}/s  DINO reference "
            f"{r['reference_per_s']:6.1f}/s  ratio (median of reps) {r['ratio_median']:.2f}  "
            f"reps {r['ratios']}",
            flush=True,
        )
    print(f"cpu: {result['cpu']}, frames {args.frame_size} px JPEG, threads 1")
    for workers in [int(w) for w in args.workers.split(",") if w]:
        rate = loader_rate(args, frames, spec, workers)
        result[f"loader_{workers}_workers_clips_per_s"] = rate
        print(f"DataLoader, {workers:2d} workers: {rate:7.1f} clips/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
