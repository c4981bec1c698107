"""Broken inputs are skipped and counted; the run goes on; damaged outputs are refused."""

from __future__ import annotations

import json
import os

import av
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
