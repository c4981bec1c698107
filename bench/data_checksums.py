"""Cost of the per-record crc32s of a preprocessed dataset (issue 23 item 3).

    .venv/bin/python bench/data_checksums.py [--frames 4000] [--frame-kb 50] [--workdir DIR]

Writes an Ego-Exo4D-style dataset with megatron's IndexedDatasetBuilder: `--frames` stored
frames of `--frame-kb` KB each (the size of a 448 px JPEG at quality 90), 40 per take, and a
clip (4 frames, 20 poses, 20 camera poses, the clip row) per start. Measures, in CPU seconds of
this process (the machine is shared: wall time would mostly measure the others):

- preprocessing's side files: `write_record_checksums` over the four files (MB per CPU s);
- training's reads: `ClipDataset[i]` over every clip, with and without checksums (the same
  files; the manifest without its `checksums` entry), best of 3 passes, page cache warm;
- for scale, decoding one stored frame: a 448 x 448 JPEG of that size with PIL, as the loader
  does for every frame it uses.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megatron_ego.data.checksums import CHECKSUMS, write_record_checksums
from megatron_ego.data.clips import ClipDataset

T, P, J, PER_TAKE = 4, 5, 17, 40
DTYPES = {"frames": np.uint8, "poses": np.float32, "camera": np.float32, "clips": np.int64}


def _cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def build(root: Path, frames: int, frame_bytes: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    builders = {n: IndexedDatasetBuilder(str(root / f"{n}.bin"), dtype=d) for n, d in DTYPES.items()}
    takes = []
    for take in range(frames // PER_TAKE):
        first = take * PER_TAKE
        for _ in range(PER_TAKE):
            builders["frames"].add_item(torch.from_numpy(
                rng.integers(0, 256, frame_bytes, dtype=np.uint8)))
        builders["frames"].end_document()
        starts = range(PER_TAKE - T + 1)
        for s in starts:
            builders["clips"].add_item(torch.tensor([take, 5 * s, *(first + s + t for t in range(T))]))
            builders["poses"].add_item(torch.from_numpy(
                rng.standard_normal(T * P * J * 4).astype(np.float32)))
            builders["camera"].add_item(torch.from_numpy(np.tile(np.eye(3, 4, dtype=np.float32),
                                                                 (T * P, 1, 1)).reshape(-1)))
        for n in ("clips", "poses", "camera"):
            builders[n].end_document()
        takes.append({"name": f"take{take}", "uid": str(take), "first_frame": first,
                      "num_frames": PER_TAKE, "num_clips": len(starts)})
    for n, b in builders.items():
        b.finalize(str(root / f"{n}.idx"))
    manifest = dict(format_version=2, source="egoexo4d", split="train", encoding="jpeg",
                    frame_height=448, frame_width=448, frame_fps=6, pose_fps=30, num_steps=T,
                    poses_per_step=P, num_frames=frames, num_clips=sum(t["num_clips"] for t in takes),
                    preprocess={}, takes=takes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def read_all(ds: ClipDataset) -> None:
    for i in range(len(ds)):
        ds[i]


def jpeg_decode_s(frame_bytes: int) -> tuple[float, int]:
    """CPU seconds to decode one 448 px JPEG of about `frame_bytes` bytes (median of 20)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8), 8, 0), 8, 1)
    noise = rng.integers(0, 40, smooth.shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(smooth + noise).save(out, format="JPEG", quality=90)
    data = out.getvalue()
    times = []
    for _ in range(20):
        start = time.process_time()
        with Image.open(io.BytesIO(data)) as image:
            np.asarray(image.convert("RGB"))
        times.append(time.process_time() - start)
    return float(np.median(times)), len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--frame-kb", type=int, default=50)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="data_checksums_"))
    root = workdir / "data"
    root.mkdir(parents=True)
    try:
        build(root, args.frames, args.frame_kb * 1000)
        size = sum((root / f"{n}.bin").stat().st_size for n in DTYPES)
        write_s, entry = _cpu(write_record_checksums, str(root), DTYPES)
        manifest = json.loads((root / "manifest.json").read_text())
        plain = ClipDataset(str(root))
        manifest[CHECKSUMS] = entry
        (root / "manifest.json").write_text(json.dumps(manifest))
        checked = ClipDataset(str(root))
        read_plain = min(_cpu(read_all, plain)[0] for _ in range(3))
        read_checked = min(_cpu(read_all, checked)[0] for _ in range(3))
        decode_s, jpeg_bytes = jpeg_decode_s(args.frame_kb * 1000)
        clips = len(checked)
        result = {
            "frames": args.frames, "clips": clips, "bytes": size,
            "write_cpu_s": round(write_s, 3), "write_MB_per_cpu_s": round(size / write_s / 1e6),
            "read_cpu_us_per_clip_without": round(read_plain / clips * 1e6, 1),
            "read_cpu_us_per_clip_with": round(read_checked / clips * 1e6, 1),
            "check_cpu_us_per_clip": round((read_checked - read_plain) / clips * 1e6, 1),
            "jpeg_decode_cpu_us": round(decode_s * 1e6), "jpeg_bytes": jpeg_bytes,
            "check_share_of_decoding_4_frames": round(
                (read_checked - read_plain) / clips / (4 * decode_s), 4),
            "cpus": os.cpu_count()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
