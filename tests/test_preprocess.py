"""Demo world -> preprocess.egoexo4d / preprocess.walking_tours -> ClipDataset round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ego.data.clips import ClipDataset, decode_frame
from preprocess import walking_tours

from .worlds import SIZE, make_world, run_egoexo4d


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("raw"))
    takes = make_world(root)
    out = str(tmp_path_factory.mktemp("egoexo4d"))
    run_egoexo4d(root, out, "--keep-shards")
    return root, {t["take_name"]: t["take_uid"] for t in takes}, out


def test_round_trip_poses_and_frames_match_ground_truth(demo):
    root, uids, out = demo
    ds = ClipDataset(out)
    assert ds.source == "egoexo4d" and ds.encoding == "jpeg" and ds.frame_size == (SIZE, SIZE)
    assert len(ds) >= 6
    errors, mse, overridden, motion = [], [], 0, []
    for i in range(len(ds)):  # every clip: the demo is tiny
        clip = ds[i]
        uid = uids[clip.take]
        gt = np.load(os.path.join(root, "ground_truth", f"{uid}.npz"))
        frames = range(clip.start_frame, clip.start_frame + 20)
        automatic = os.path.join(root, "annotations", "ego_pose", "train", "body", "automatic",
                                 f"{uid}.json")
        overridden += int(gt["manual"][frames].any() and os.path.exists(automatic))
        visible = gt["visible"][frames]  # [20, 17]
        assert clip.poses.shape == (20, 17, 4) and clip.poses.dtype == np.float32
        np.testing.assert_array_equal(clip.poses[..., 3], visible)
        want = np.where(visible[..., None], gt["joints_cam"][frames], 0.0)  # [20, 17, 3]
        errors.append(np.abs(clip.poses[..., :3] - want).max())
        E = gt["extrinsics"][frames]  # [20, 3, 4] world->camera
        rotation = np.einsum("ij,nkj->nik", E[0, :, :3], E[:, :, :3])  # R_0 R_k^T
        centres = -np.einsum("nji,nj->ni", E[:, :, :3], E[:, :, 3])  # [20, 3] world
        moved = np.einsum("ij,nj->ni", E[0, :, :3], centres - centres[0])  # in camera 0
        assert clip.camera.shape == (20, 3, 4) and clip.camera.dtype == np.float32
        np.testing.assert_allclose(clip.camera[..., :3], rotation, atol=1e-5)
        np.testing.assert_allclose(clip.camera[..., 3], moved, atol=1e-5)  # metres
        motion.append(np.abs(clip.camera[-1] - np.eye(3, 4)).max())
        for t, frame in enumerate(clip.frames):
            image = decode_frame(frame)  # [H, W, 3]
            reference = gt["frames"][(clip.start_frame + 5 * t) // 5]
            mse.append(np.mean((image.astype(np.float64) - reference) ** 2))
    assert max(errors) < 1e-5  # metres
    assert max(motion) > 0.05  # the camera moves within clips: the test can fail
    assert overridden > 0  # clips where manual labels had to win over (noisy) automatic ones
    assert 10 * np.log10(255.0**2 / np.mean(mse)) > 30.0  # dB over the sampled frames


def test_clips_follow_the_format(demo):
    root, uids, out = demo
    ds = ClipDataset(out)
    manifest = ds.manifest
    assert manifest["num_clips"] == len(ds) and manifest["preprocess"]["stride"] == 5
    for take in manifest["takes"]:
        assert take["uid"] == uids[take["name"]]
        assert take["aria_camera"] == "aria01"  # recorded: the wearer's camera
    index = IndexedDataset(os.path.join(out, "clips"))  # keep it alive: deleting it unmaps
    clips = np.stack(index[:])  # [n, 6]
    assert (clips[:, 1] % 5 == 0).all()
    for row in clips:  # f_t are this take's stored frames, 5 frames (one step) apart
        take = manifest["takes"][row[0]]
        assert take["first_frame"] <= row[2:].min() and row[2:].max() < (
            take["first_frame"] + take["num_frames"])
        assert (np.diff(row[2:]) >= 1).all()
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["windows_kept"] == len(ds) and stats["takes_kept"] == len(manifest["takes"])
    assert stats["windows_skipped"]["pose_gap"] > 0  # the demo leaves a 1 s hole per take
    assert stats["pose_frames"]["manual"] > 0 and stats["pose_frames"]["automatic"] > 0
    # takes 0 and 1 name aria01 in takes.json; take 2 has no capture metadata
    assert stats["aria_camera"] == {"takes_json": 2, "inferred": 1}


def test_megatron_indexed_dataset_opens_every_output(demo, tmp_path):
    root, _, out = demo
    wt = str(tmp_path / "wt")
    walking_tours.main(["--videos", os.path.join(root, "walking_tours"), "--out", wt,
                        "--size", "48"])
    for prefix, dtype, items in (("frames", np.uint8, None), ("poses", np.float32, 20 * 17 * 4),
                                 ("camera", np.float32, 20 * 3 * 4), ("clips", np.int64, 6)):
        dataset = IndexedDataset(os.path.join(out, prefix))
        assert dataset.index.dtype == dtype and len(dataset) > 0
        if items:
            assert (dataset.sequence_lengths == items).all()
    frames = IndexedDataset(os.path.join(wt, "frames"))
    assert len(frames) == 2 * 6  # 2 s at 6 fps
    ds = ClipDataset(wt)
    assert ds.source == "walking_tours" and len(ds) == 12 and ds[3].poses is None
    assert decode_frame(ds[3].frames[0]).shape == (48, 84, 3)  # 16:9, shorter side 48


def test_rerun_skips_finished_shards_and_raw_encoding(demo, tmp_path):
    root, _, out = demo
    shards = os.path.join(out, ".shards")
    before = {name: os.path.getmtime(os.path.join(shards, name)) for name in os.listdir(shards)}
    run_egoexo4d(root, out, "--keep-shards", "--overwrite")  # the merge is redone, not shards
    after = {name: os.path.getmtime(os.path.join(shards, name)) for name in os.listdir(shards)}
    assert before == after
    raw = str(tmp_path / "raw")
    run_egoexo4d(root, raw, "--encoding", "raw")
    a, b = ClipDataset(out), ClipDataset(raw)
    assert len(a) == len(b) and b.encoding == "raw"
    assert not os.path.exists(os.path.join(raw, ".shards"))
    clip_a, clip_b = a[len(a) - 1], b[len(b) - 1]
    np.testing.assert_array_equal(clip_a.poses, clip_b.poses)
    assert clip_b.frames[0].shape == (SIZE, SIZE, 3)
    assert psnr(decode_frame(clip_a.frames[0]), clip_b.frames[0]) > 30


def test_every_file_has_a_crc32_per_record(demo):
    """Preprocessing writes <name>.crc (one crc32 per record) and lists them in the manifest;
    every record read back matches (issue 23 item 3)."""
    import zlib

    _, _, out = demo
    ds = ClipDataset(out)
    files = ds.manifest["checksums"]["files"]
    assert sorted(files) == ["camera", "clips", "frames", "poses"]
    for name, entry in files.items():
        crcs = np.fromfile(os.path.join(out, f"{name}.crc"), dtype="<u4")
        records = IndexedDataset(os.path.join(out, name), mmap=True)
        assert entry["records"] == len(records) == len(crcs)
        assert entry["crc32"] == zlib.crc32(crcs.tobytes())
        assert all(zlib.crc32(np.ascontiguousarray(records[i])) == crcs[i]
                   for i in range(len(records)))
    for i in range(len(ds)):
        ds[i]  # every record checks on read
