"""Evaluation that cannot lie quietly (issue 23 item 4): a val clip with a NaN in a visible joint
is skipped, named and counted (motion evaluation exited 0 with `mpjpe_30fps: null` for every
method and `num_skipped: 0`), and a damaged k-NN feature cache is rebuilt with a warning instead
of a traceback that suggests `weights_only=False`."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from megatron_ego.config import load_config
from megatron_ego.data.clips import ClipDataset
from megatron_ego.eval.features import load_cached, save_cached, usable_clips
from megatron_ego.runtime.processes import Processes

from .reliability_data import make_two_class_imagefolder
from .test_reliability_input import _MeanColourAgent, make_dataset

CPU = Processes(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _set_pose(data, clip: int, value: float, pose: int = 7, joint: int = 3) -> None:
    """Write `value` into x of (pose, joint) of clip `clip` in poses.bin (its size unchanged)."""
    from megatron_ego.data.indexed import open_indexed

    poses = open_indexed(str(data / "poses"), np.float32)
    offset = int(poses.index.sequence_pointers[clip]) + 4 * ((pose * 17 + joint) * 4)
    del poses
    with open(data / "poses.bin", "r+b") as f:
        f.seek(offset)
        f.write(np.float32(value).tobytes())


class _StillAgent:
    """Stands in for an exported EgoAgent: predicts that every joint stays where it last was."""

    def __init__(self):
        self.cfg = load_config("configs/tiny_cpu.yaml", ["--model.image_size=64",
                                                          "--model.local_crop_size=32"])
        self.image_size, self.num_steps, self.poses_per_step, self.num_joints = 64, 4, 5, 17

    def act(self, frames, observed):
        if not torch.isfinite(observed).all():
            raise ValueError("poses hold NaN or inf at visible joints")  # as the real agent
        last = observed[:, -1:, :, :3]  # [n, 1, J, 3]
        return last.expand(-1, (self.num_steps - 1) * self.poses_per_step, -1, -1)


def test_a_val_clip_with_a_nan_pose_is_skipped_named_and_counted(tmp_path, caplog):
    from megatron_ego.eval.run_motion import run_motion

    data = make_dataset(tmp_path / "data")  # 10 clips
    _set_pose(data, 4, float("nan"))  # a visible joint (the dataset marks every joint visible)
    kept, skipped = usable_clips(ClipDataset(str(data)), np.arange(10))
    assert kept.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert skipped == [f"{data}/poses.bin record 4: non-finite value at pose 7, joint 3, "
                       "channel 0"]
    with caplog.at_level(logging.WARNING):
        results = run_motion(_StillAgent(), str(data), tmp_path / "eval", CPU, batch_size=4,
                             workers=0, num_figures=0)
    assert f"skipped a val clip, {data}/poses.bin record 4" in caplog.text
    for method in ("egoagent", "zero_velocity", "constant_velocity"):
        got = results[method]
        assert got["num_bad_clips"] == 1 and got["num_skipped"] >= 1
        assert got["num_samples"] == 9
        assert math.isfinite(got["mpjpe_30fps"]), (method, got)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_damaged_feature_cache_is_refused_with_a_warning(tmp_path, caplog):
    path = tmp_path / "knn_train.pt"
    save_cached(path, "key", {"features": torch.ones(2, 3), "labels": torch.zeros(2)})
    assert load_cached(path, "key", ("features", "labels"))["features"].shape == (2, 3)
    marker = tmp_path / "pwned"
    damages = {
        "truncated": lambda: path.write_bytes(path.read_bytes()[:100]),
        "not torch": lambda: path.write_text("hello"),
        "hostile": lambda: torch.save({"features": _Payload(marker), "fingerprint": "key"}, path),
        "no labels": lambda: torch.save({"features": torch.ones(2), "fingerprint": "key"}, path),
        "a list": lambda: torch.save([1, 2], path),
    }
    for name, damage in damages.items():
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert load_cached(path, "key", ("features", "labels")) is None, name
        assert f"feature cache {path}" in caplog.text and "rebuilding it" in caplog.text, name
        assert "weights_only" not in caplog.text, name
    assert not marker.exists()  # nothing in the file ever ran


def test_knn_rebuilds_a_damaged_cache_and_reports_the_same(tmp_path, caplog):

    from megatron_ego.eval.run_knn import run_knn

    make_two_class_imagefolder(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    args = (_MeanColourAgent(), str(tmp_path / "train"), str(tmp_path / "val"), tmp_path / "out",
            CPU, str(model_dir))
    first = run_knn(*args, batch_size=4, workers=0, k=3)
    cache = next((tmp_path / "out" / "features").glob("knn_train.*.pt"))
    cache.write_bytes(cache.read_bytes()[: len(cache.read_bytes()) // 2])  # cut short
    with caplog.at_level(logging.WARNING):
        again = run_knn(*args, batch_size=4, workers=0, k=3)
    assert again == first
    assert f"feature cache {cache} is damaged" in caplog.text
    assert torch.load(cache, weights_only=True)["features"].shape[0] == 6  # rebuilt whole
