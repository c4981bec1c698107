"""Write shards with megatron's IndexedDatasetBuilder and merge them into one dataset per file.

A shard holds a fixed group of takes (or videos): `frames` (uint8), and for Ego-Exo4D `poses`
(float32), `camera` (float32) and `clips` (int64), one document per take. Its files are written
under temporary names and renamed only once complete; the shard's JSON (written last,
atomically) marks it finished, so a re-run skips it. The merge concatenates `frames`, `poses`
and `camera` with `IndexedDatasetBuilder.add_index` and rewrites `clips` with every take index
and frame index f_t shifted by the takes and frames of the shards before it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_ego.data.indexed import open_indexed

__all__ = ["CLIP_FILES", "DTYPES", "ShardWriter", "file_names", "finish_files", "merge_shards",
           "write_json_atomic"]

DTYPES = {"frames": np.uint8, "poses": np.float32, "camera": np.float32, "clips": np.int64}
CLIP_FILES = ("frames", "poses", "camera", "clips")  # an Ego-Exo4D dataset's files
CLIP_HEAD = 2  # clips rows: [take_index, start_frame, f_0 .. f_{T-1}]


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to `path` via a temporary file and a rename (readers never see half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def file_names(with_clips: bool) -> list[str]:
    """The indexed files of a dataset: every CLIP_FILES for Ego-Exo4D, `frames` otherwise."""
    return list(CLIP_FILES) if with_clips else ["frames"]


def _builder(tmp_prefix: str, name: str) -> IndexedDatasetBuilder:
    return IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=DTYPES[name])


def finish_files(builder: IndexedDatasetBuilder, tmp_prefix: str, final_prefix: str) -> None:
    """Finalize `<tmp_prefix>.{bin,idx}` and rename both to `<final_prefix>.{bin,idx}`."""
    builder.finalize(tmp_prefix + ".idx")
    for ext in (".bin", ".idx"):
        os.replace(tmp_prefix + ext, final_prefix + ext)


class ShardWriter:
    """One shard's builders; frames and clips are indexed from 0 within the shard.

    Args:
        prefix: path prefix of the shard's files, e.g. `OUT/.shards/shard_00003`.
        with_clips: also write `poses`, `camera` and `clips` (Ego-Exo4D).
    """

    def __init__(self, prefix: str, with_clips: bool) -> None:
        self.prefix = prefix
        self._builders = {name: _builder(f"{prefix}.{name}.tmp", name)
                          for name in file_names(with_clips)}
        self.num_frames = 0
        self.num_clips = 0
        self.num_takes = 0

    def add_frame(self, data: np.ndarray) -> int:
        """Append one stored frame (1-D uint8); returns its index in the shard."""
        self._builders["frames"].add_item(torch.from_numpy(np.array(data, np.uint8)))
        self.num_frames += 1
        return self.num_frames - 1

    def end_take(self) -> None:
        """Close the current take's document in `frames`."""
        self._builders["frames"].end_document()
        self.num_takes += 1

    def add_take(self, frames: list[np.ndarray], clips: np.ndarray, poses: np.ndarray,
                 camera: np.ndarray) -> None:
        """Append a whole take at once (nothing is written for a take that fails half-way).

        Args:
            frames: stored frames, each 1-D uint8; clips: int64 [n, 2 + T] with f_t indexing
                `frames` from 0 (shifted here to the shard's numbering; the take index is set
                here too); poses: float32 [n, 20, 17, 4]; camera: float32 [n, 20, 3, 4], each
                frame's camera pose relative to its clip's first frame (`windows.window_camera`).
        """
        if len(camera) != len(clips) or len(poses) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(poses)} poses, {len(camera)} cameras")
        clips = clips.astype(np.int64).copy()
        clips[:, 0] = self.num_takes
        clips[:, CLIP_HEAD:] += self.num_frames
        lengths = [len(f) for f in frames]
        self._builders["frames"].add_document(torch.from_numpy(np.concatenate(frames)), lengths)
        self._builders["poses"].add_document(
            torch.from_numpy(poses.astype(np.float32).reshape(-1)), [poses[0].size] * len(poses))
        self._builders["camera"].add_document(
            torch.from_numpy(camera.astype(np.float32).reshape(-1)),
            [camera[0].size] * len(camera))
        self._builders["clips"].add_document(
            torch.from_numpy(clips.reshape(-1)), [clips.shape[1]] * len(clips))
        self.num_frames += len(frames)
        self.num_clips += len(clips)
        self.num_takes += 1

    def commit(self, meta: dict[str, Any]) -> None:
        """Finalize and rename every file, then write `<prefix>.json` (the completion mark)."""
        for name, builder in self._builders.items():
            finish_files(builder, f"{self.prefix}.{name}.tmp", f"{self.prefix}.{name}")
        write_json_atomic(self.prefix + ".json", meta)

    def abort(self) -> None:
        """Close and delete the temporary files (after an exception)."""
        for name, builder in self._builders.items():
            builder.data_file.close()
            for ext in (".bin", ".idx"):
                path = f"{self.prefix}.{name}.tmp{ext}"
                if os.path.exists(path):
                    os.remove(path)


def merge_shards(
    out_dir: str, shards: list[tuple[str, dict[str, Any]]], with_clips: bool
) -> list[dict[str, Any]]:
    """Concatenate finished shards, in order, into `out_dir/{frames,poses,camera,clips}.{bin,idx}`.

    Args:
        shards: (prefix, meta) per shard, in take order; meta["takes"] lists the shard's kept
            takes as {name, uid, num_frames, num_clips}.

    Returns:
        The manifest's take list: {name, uid, first_frame, num_frames, num_clips} per take.
    """
    names = file_names(with_clips)
    tmp = {name: os.path.join(out_dir, f"{name}.tmp") for name in names}
    builders = {name: _builder(tmp[name], name) for name in names}
    takes, frame_offset = [], 0
    for shard, meta in shards:
        if not meta["takes"]:
            continue  # nothing kept: its files hold no records
        builders["frames"].add_index(f"{shard}.frames")
        if with_clips:
            builders["poses"].add_index(f"{shard}.poses")
            builders["camera"].add_index(f"{shard}.camera")
            clips = open_indexed(f"{shard}.clips", np.int64)  # its mmap closes when deleted
            rows = np.stack(clips[:])  # [n, 2 + T], a copy
            del clips
            rows[:, 0] += len(takes)
            rows[:, CLIP_HEAD:] += frame_offset
            for k in range(len(meta["takes"])):
                mine = rows[rows[:, 0] == len(takes) + k]
                builders["clips"].add_document(
                    torch.from_numpy(mine.reshape(-1)), [rows.shape[1]] * len(mine))
        for entry in meta["takes"]:
            takes.append({**entry, "first_frame": frame_offset})
            frame_offset += entry["num_frames"]
    for name, builder in builders.items():
        finish_files(builder, tmp[name], os.path.join(out_dir, name))
    return takes
