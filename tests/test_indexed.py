"""megatron_ego.data.indexed / clips: the reader API over megatron's IndexedDataset."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_ego.data.clips import ClipDataset, decode_frame
from megatron_ego.data.indexed import IndexedDataError, open_indexed

H, W, T = 8, 6, 4


def _write(prefix: str, dtype, items: list[np.ndarray], docs: list[int]) -> None:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for k, item in enumerate(items):
        builder.add_item(torch.from_numpy(np.ascontiguousarray(item).reshape(-1)))
        if k + 1 in docs:
            builder.end_document()
    builder.finalize(prefix + ".idx")


@pytest.fixture()
def raw_dataset(tmp_path):
    """A hand-built Ego-Exo4D-style directory: 2 takes of 4 raw frames, one clip each."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(8)]
    poses = [rng.standard_normal((20, 17, 4)).astype(np.float32) for _ in range(2)]
    camera = [rng.standard_normal((20, 3, 4)).astype(np.float32) for _ in range(2)]
    clips = [np.array([0, 5, 0, 1, 2, 3]), np.array([1, 0, 4, 5, 6, 7])]
    _write(str(tmp_path / "frames"), np.uint8, frames, [4, 8])
    _write(str(tmp_path / "poses"), np.float32, poses, [2])
    _write(str(tmp_path / "camera"), np.float32, camera, [2])
    _write(str(tmp_path / "clips"), np.int64, clips, [2])
    manifest = dict(
        format_version=2, source="egoexo4d", split="train", encoding="raw", frame_height=H,
        frame_width=W, frame_fps=6, pose_fps=30, num_steps=T, poses_per_step=5, num_frames=8,
        num_clips=2, preprocess={},
        takes=[dict(name="a", uid="ua", first_frame=0, num_frames=4, num_clips=1),
               dict(name="b", uid="ub", first_frame=4, num_frames=4, num_clips=1)],
    )
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, frames, poses, camera


def test_clip_dataset_reads_what_was_written(raw_dataset):
    path, frames, poses, camera = raw_dataset
    ds = ClipDataset(str(path))
    assert len(ds) == 2 and ds.encoding == "raw" and ds.frame_size == (H, W)
    clip = ds[1]
    assert clip.take == "b" and clip.start_frame == 0
    np.testing.assert_array_equal(clip.poses, poses[1])
    np.testing.assert_array_equal(clip.camera, camera[1])  # [20, 3, 4]
    for got, want in zip(clip.frames, [frames[i] for i in (4, 5, 6, 7)]):
        np.testing.assert_array_equal(decode_frame(got), want)
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a pickled copy
    np.testing.assert_array_equal(again[0].frames[3], frames[3])


def test_truncated_bin_is_refused_with_a_clear_message(raw_dataset):
    path = raw_dataset[0]
    bin_path = path / "frames.bin"
    with open(bin_path, "r+b") as f:
        f.truncate(os.path.getsize(bin_path) - 7)
    with pytest.raises(IndexedDataError, match=r"frames\.bin.*truncated.*re-run preprocessing"):
        ClipDataset(str(path))


def test_wrong_dtype_and_missing_files_are_refused(raw_dataset):
    path = raw_dataset[0]
    with pytest.raises(IndexedDataError, match="float32 was expected"):
        open_indexed(str(path / "clips"), np.float32)
    os.remove(path / "poses.idx")
    with pytest.raises(IndexedDataError, match=r"poses\.idx does not exist"):
        open_indexed(str(path / "poses"), np.float32)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ClipDataset(str(path / "nowhere"))


def test_dataset_of_the_old_format_is_refused_with_one_line(raw_dataset):
    path = raw_dataset[0]
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    os.remove(path / "camera.bin")  # a version-1 dataset has no camera motion
    with pytest.raises(IndexedDataError, match=r"format_version=1, this code reads 2 .* re-run "
                                         r"preprocessing \(python -m preprocess\.egoexo4d") as err:
        ClipDataset(str(path))
    assert "\n" not in str(err.value)
