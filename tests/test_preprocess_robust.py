"""Broken inputs are skipped and counted; the run goes on; damaged outputs are refused."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest

from megatron_ego.data.clips import ClipDataset
from megatron_ego.data.indexed import IndexedDataError
from preprocess.demo_world import take_video_path

from .worlds import make_world, run_egoexo4d


def _truncate(path: str, keep: float) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def _faststart(path: str) -> None:
    """Re-mux with the index (moov) first, as streamed MP4s are: a cut file still opens."""
    tmp = path + ".faststart.mp4"
    with av.open(path) as src, av.open(tmp, "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """5 takes (index 3 goes to val): 0 truncated MP4, 2 broken JSON, 4 MP4 cut after its index."""
    root, out = str(tmp_path_factory.mktemp("raw")), str(tmp_path_factory.mktemp("out"))
    takes = make_world(root, takes=5, seconds=3)
    names = [t["take_name"] for t in takes]
    _truncate(take_video_path(root, names[0]), 0.5)
    _truncate(os.path.join(root, "annotations", "ego_pose", "train", "body", "annotation",
                           f"{takes[2]['take_uid']}.json"), 0.6)
    _faststart(take_video_path(root, names[4]))
    _truncate(take_video_path(root, names[4]), 0.6)
    run_egoexo4d(root, out)
    return names, out


def test_run_completes_counts_the_faults_and_keeps_every_good_take(broken):
    names, out = broken
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["takes_found"] == 4
    assert stats["takes_skipped"] == {"video_unreadable": 1, "annotation_malformed": 1}
    assert {s["take"]: s["reason"] for s in stats["skipped"]} == {
        names[0]: "video_unreadable", names[2]: "annotation_malformed"}
    assert stats["windows_skipped"]["beyond_video"] > 0  # take 4 lost its tail
    assert stats["windows_skipped"]["extrinsics_missing"] > 0  # take 1 lacks some extrinsics
    dataset = ClipDataset(out)
    kept = [take["name"] for take in dataset.manifest["takes"]]
    assert kept == [names[1], names[4]]
    assert {dataset[i].take for i in range(len(dataset))} == set(kept)


def test_truncated_bin_is_refused_on_open(broken):
    _, out = broken
    ClipDataset(out)  # whole: opens
    _truncate(os.path.join(out, "frames.bin"), 0.9)
    with pytest.raises(IndexedDataError, match=r"frames\.bin holds .* re-run preprocessing"):
        ClipDataset(out)


def _edit_json(path: str, edit) -> None:
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """5 takes (index 3: val). 0: per-camera extrinsics with 2 null frames and 1 malformed, and
    "bouldering" in its name; 1: takes.json lists two ego Aria cameras; 2: no metadata and a
    camera file with two Aria cameras; 4: two ego Aria cameras in takes.json, only aria01
    frame-aligned, and a wrong aria02 in the camera file."""
    root = str(tmp_path_factory.mktemp("raw"))
    takes = make_world(root, takes=5, seconds=3)
    uid = [t["take_uid"] for t in takes]

    def camera_file(k):
        return os.path.join(root, "annotations", "ego_pose", "train", "camera_pose",
                            f"{uid[k]}.json")

    def nulls(data):
        data["aria01"]["camera_extrinsics"]["40"] = None
        data["aria01"]["camera_extrinsics"]["41"] = None
        data["aria01"]["camera_extrinsics"]["60"] = [[1.0, 2.0]]

    def second_aria(data):
        data["aria02"] = {"camera_extrinsics": {k: (np.array(v) + 1.0).tolist() for k, v in
                                                data["aria01"]["camera_extrinsics"].items()}}

    def metadata(entries):
        entries[0]["take_name"] = entries[0]["take_name"].replace("walk", "bouldering")
        two = [{"cam_id": f"aria0{i}", "is_ego": True} for i in (1, 2)]
        entries[1]["capture"] = {"cameras": two}
        entries[4]["capture"] = {"cameras": two}
        entries[4]["frame_aligned_videos"] = {"aria01": {}, "cam01": {}}

    _edit_json(camera_file(0), nulls)
    _edit_json(camera_file(2), second_aria)
    _edit_json(camera_file(4), second_aria)
    _edit_json(os.path.join(root, "takes.json"), metadata)
    with open(os.path.join(root, "takes.json")) as f:
        names = [t["take_name"] for t in json.load(f)]
    return root, names, uid


def test_null_extrinsics_skip_frames_and_two_aria_cameras_choose_or_skip(planted, tmp_path):
    root, names, uid = planted
    out = str(tmp_path / "out")
    run_egoexo4d(root, out)
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["extrinsics_frames_skipped"] == {"null": 2, "malformed": 1}
    assert stats["takes_skipped"] == {"aria_camera_ambiguous": 2}
    assert {s["take"] for s in stats["skipped"]} == {names[1], names[2]}
    assert stats["aria_camera"] == {"takes_json": 2}  # takes 0 and 4 name it in takes.json
    dataset = ClipDataset(out)
    kept = {t["name"]: t["aria_camera"] for t in dataset.manifest["takes"]}
    assert kept == {names[0]: "aria01", names[4]: "aria01"}  # bouldering kept by default
    starts = [dataset[i].start_frame for i in range(len(dataset)) if dataset[i].take == names[0]]
    assert starts and all(not {40, 41, 60} & set(range(s, s + 20)) for s in starts)
    gt = np.load(os.path.join(root, "ground_truth", f"{uid[4]}.npz"))
    for i in range(len(dataset)):  # take 4 read aria01, not the wrong aria02
        clip = dataset[i]
        if clip.take == names[4]:
            frames = range(clip.start_frame, clip.start_frame + 20)
            want = np.where(gt["visible"][frames][..., None], gt["joints_cam"][frames], 0.0)
            np.testing.assert_allclose(clip.poses[..., :3], want, atol=1e-5)


def test_exclude_bouldering_leaves_those_takes_out_counted(planted, tmp_path):
    root, names, _ = planted
    out = str(tmp_path / "out")
    run_egoexo4d(root, out, "--exclude-bouldering")
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["takes_excluded"] == {"bouldering": 1} and stats["takes_found"] == 4
    kept = [t["name"] for t in ClipDataset(out).manifest["takes"]]
    assert kept == [names[4]]
    assert ClipDataset(out).manifest["preprocess"]["exclude_bouldering"] is True
