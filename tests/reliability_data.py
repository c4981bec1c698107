"""A small Ego-Exo4D-style dataset written with megatron's IndexedDatasetBuilder, and the tiny
model the reliability tests train on it (one rank, plain python)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

T, P, J, SIDE = 4, 5, 17, 72
TINY = ["--model.num_layers=1", "--model.hidden_size=32", "--model.num_attention_heads=2",
        "--model.head_hidden_dim=32", "--model.head_bottleneck_dim=16", "--model.head_out_dim=32",
        "--data.num_workers=0", "--data.num_local_crops=2", "--data.walking_tours_ratio=0",
        "--run.micro_batch_size=2", "--run.global_batch_size=2", "--schedule.warmup_iters=0",
        "--run.log_interval=1", "--run.name=run"]


def _write(prefix: Path, dtype, items: list[np.ndarray], docs: list[int]) -> None:
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for k, item in enumerate(items):
        builder.add_item(torch.from_numpy(np.array(item).reshape(-1)))
        if k + 1 in docs:
            builder.end_document()
    builder.finalize(f"{prefix}.idx")


def _jpeg(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return np.frombuffer(out.getvalue(), dtype=np.uint8)


def make_dataset(path: Path, takes: int = 2, frames_per_take: int = 8) -> Path:
    """An Ego-Exo4D-style JPEG dataset: `takes` x `frames_per_take` frames, a clip per start."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = [_jpeg(rng) for _ in range(takes * frames_per_take)]
    clips, poses, camera, meta = [], [], [], []
    for take in range(takes):
        first = take * frames_per_take
        starts = range(frames_per_take - T + 1)
        for s in starts:
            clips.append(np.array([take, 5 * s] + [first + s + t for t in range(T)]))
            p = rng.standard_normal((T * P, J, 4)).astype(np.float32)
            p[..., 3] = 1.0
            poses.append(p)
            camera.append(np.tile(np.eye(3, 4, dtype=np.float32), (T * P, 1, 1)))  # [T P, 3, 4]
        meta.append(dict(name=f"take{take}", uid=f"u{take}", first_frame=first,
                         num_frames=frames_per_take, num_clips=len(starts)))
    _write(path / "frames", np.uint8, frames, [(t + 1) * frames_per_take for t in range(takes)])
    _write(path / "poses", np.float32, poses, [len(poses)])
    _write(path / "camera", np.float32, camera, [len(camera)])
    _write(path / "clips", np.int64, clips, [len(clips)])
    manifest = dict(format_version=2, source="egoexo4d", split="train", encoding="jpeg",
                    frame_height=SIDE, frame_width=SIDE, frame_fps=6, pose_fps=30, num_steps=T,
                    poses_per_step=P, num_frames=len(frames), num_clips=len(clips),
                    preprocess={}, takes=meta)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def make_two_class_imagefolder(root: Path) -> None:
    """root/{train,val}/class{0,1}/{0,1,2}.jpg: 20 px red and blue squares (a k-NN set)."""
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in enumerate([(250, 10, 10), (10, 10, 250)]):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), colour).save(folder / f"{i}.jpg", quality=95)
