"""Cost of the integrity checks when a dataset opens, at the paper's scale (1.4M clips).

    .venv/bin/python bench/index_check.py [--records 1400000] [--workdir /tmp/index_check]

Writes a synthetic Ego-Exo4D-style dataset with `--records` clips and as many frames: the
`.idx` files are real (megatron's index writer: pointers, sizes, document indices), the `.bin`
files of frames and poses are sparse (their sizes match, no bytes are stored), clips.bin is real
(T + 2 int64 per clip, valid ids). Prints the best and median of 5 opens of

- megatron's `IndexedDataset` alone on the three files (what the check adds to),
- `open_indexed` on frames.idx (every pointer and size checked against the .bin),
- `ClipDataset` (three `open_indexed` plus the clip-table check, which reads clips.bin),

with the page cache warm (the second and later opens of a training start).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _write(root: str, name: str, dtype, sizes: np.ndarray, docs: list[int],
           data: np.ndarray | None = None) -> None:
    from megatron.core.datasets.indexed_dataset import _IndexWriter

    with _IndexWriter(os.path.join(root, f"{name}.idx"), dtype) as writer:
        writer.write(sizes.tolist(), None, docs)
    with open(os.path.join(root, f"{name}.bin"), "wb") as f:
        if data is not None:
            f.write(data.tobytes())
        else:  # sparse: the size the index promises, no blocks on disk
            f.truncate(int(sizes.astype(np.int64).sum()) * np.dtype(dtype).itemsize)


def build(root: str, n: int, num_steps: int = 4) -> None:
    """Synthetic dataset: JPEG-sized frames (10-30 kB), 20 x 17 x 4 poses, one take per 50."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    docs = list(range(0, n, 50)) + [n]
    _write(root, "frames", np.uint8, rng.integers(10_000, 30_000, n).astype(np.int32), docs)
    _write(root, "poses", np.float32, np.full(n, num_steps * 5 * 17 * 4, np.int32), docs)
    table = np.zeros((n, 2 + num_steps), np.int64)  # take 0, start 0, frame ids
    table[:, 2:] = rng.integers(0, n, (n, num_steps))
    _write(root, "clips", np.int64, np.full(n, 2 + num_steps, np.int32), docs, table)
    manifest = dict(format_version=1, source="egoexo4d", split="train", encoding="jpeg",
                    frame_height=224, frame_width=224, frame_fps=6, pose_fps=30,
                    num_steps=num_steps, poses_per_step=5, num_frames=n, num_clips=n,
                    preprocess={}, takes=[dict(name="t", uid="t", first_frame=0, num_frames=n,
                                               num_clips=n)])
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def _timed(fn, reps: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[reps // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--workdir", default="/tmp/index_check")
    args = parser.parse_args()
    build(args.workdir, args.records)

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ego.data.clips import ClipDataset
    from megatron_ego.data.indexed import open_indexed

    root = args.workdir
    rows = [
        ("megatron IndexedDataset x3 (no check)",
         lambda: [IndexedDataset(os.path.join(root, k), mmap=True)
                  for k in ("frames", "poses", "clips")]),
        ("open_indexed(frames)", lambda: open_indexed(os.path.join(root, "frames"), np.uint8)),
        ("ClipDataset (all checks)", lambda: ClipDataset(root)),
    ]
    print(f"{args.records} records; seconds per open, best / median of 5")
    for name, fn in rows:
        best, median = _timed(fn)
        print(f"  {name:<40s} {best:.3f} / {median:.3f}")


if __name__ == "__main__":
    main()
