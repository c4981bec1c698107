"""Data that cannot lie quietly (issue 23 item 3): a crc32 per record (written by preprocessing,
checked at open and on every read), a documented bound on poses in metres, a clip table whose
frames belong to the clip's take in order. A bad record is named and counted like one that does
not decode; the records of skipped steps are named (test_reliability_last_good.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_ego.data.checksums import CHECKSUMS, write_record_checksums
from megatron_ego.data.clips import ClipDataset
from megatron_ego.data.indexed import IndexedDataError, open_indexed
from megatron_ego.pose_format import MAX_ABS_METRES, pose_problem
from megatron_ego.runtime import exit_codes

from .test_reliability_input import TINY, _micro_batches, _one_error, _pretrain, make_dataset

DTYPES = {"frames": np.uint8, "poses": np.float32, "camera": np.float32, "clips": np.int64}


def _checksummed(path: Path) -> Path:
    """What preprocessing writes: <name>.crc per file and the manifest entry."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[CHECKSUMS] = write_record_checksums(str(path), DTYPES)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _record_offset(path: Path, name: str, record: int) -> int:
    index = open_indexed(str(path / name), DTYPES[name]).index
    return int(index.sequence_pointers[record])


def _write(path: Path, name: str, offset: int, data: bytes) -> None:
    with open(path / f"{name}.bin", "r+b") as f:
        f.seek(offset)
        f.write(data)


def _set_pose(path: Path, clip: int, value: float, pose: int = 7, joint: int = 3) -> None:
    offset = _record_offset(path, "poses", clip) + 4 * ((pose * 17 + joint) * 4)
    _write(path, "poses", offset, np.float32(value).tobytes())


def _flip_exponent_bit(path: Path, clip: int, pose: int = 2, joint: int = 5) -> float:
    """Flip the top exponent bit of one pose value (as a bit rot would); returns the new value."""
    offset = _record_offset(path, "poses", clip) + 4 * ((pose * 17 + joint) * 4)
    raw = bytearray((path / "poses.bin").read_bytes()[offset:offset + 4])
    raw[3] ^= 0x40  # little-endian float32: bit 30, the exponent's highest
    _write(path, "poses", offset, bytes(raw))
    return float(np.frombuffer(bytes(raw), dtype=np.float32)[0])


def _swap_frame(path: Path, clip: int, step: int, frame: int) -> None:
    """Replace frame id f_step of `clip` in clips.bin by `frame` (another valid frame id)."""
    offset = _record_offset(path, "clips", clip) + 8 * (2 + step)
    _write(path, "clips", offset, np.int64(frame).tobytes())


def test_pose_problems_are_named_in_metres():
    poses = np.zeros((20, 17, 4), np.float32)
    poses[..., 3] = 1
    assert pose_problem(poses) is None
    far = poses.copy()
    far[7, 3, 0] = 3e4
    assert pose_problem(far) == (f"joint 3 of pose 7 lies 3e+04 m from the camera, beyond the "
                                 f"{MAX_ABS_METRES:g} m bound of an egocentric pose")
    hidden = far.copy()
    hidden[7, 3, 3] = 0  # an invisible joint's position is not read ... but must stay finite
    assert pose_problem(hidden) is None
    nan = poses.copy()
    nan[1, 2, 3] = np.nan
    assert pose_problem(nan) == "non-finite value at pose 1, joint 2, channel 3"
    odd = poses.copy()
    odd[0, 0, 3] = 2.0
    assert pose_problem(odd) == "visibility 2 at pose 0, joint 0 is not in [0, 1]"


@pytest.mark.parametrize("name", ["frames", "poses", "camera", "clips"])
def test_a_changed_byte_in_any_record_is_named_when_read(tmp_path, name):
    data = _checksummed(make_dataset(tmp_path / "data"))
    clip = 3
    record = ClipDataset(str(data))[clip].frame_ids[1] if name == "frames" else clip
    offset = _record_offset(data, name, record) + (8 if name == "clips" else 20)  # clips: start
    raw = bytearray((data / f"{name}.bin").read_bytes()[offset:offset + 1])
    _write(data, name, offset, bytes([raw[0] ^ 0x01]))  # the lowest bit: still a valid value
    ds = ClipDataset(str(data))  # the side files themselves are intact: it opens
    with pytest.raises(ValueError, match=f"{data}/{name}.bin record {record} does not match "
                                         "its crc32"):
        ds[clip]
    ds[clip + 3]  # the others read as before


def test_a_damaged_checksum_file_is_refused_at_open(tmp_path):
    data = _checksummed(make_dataset(tmp_path / "data"))
    crc = data / "poses.crc"
    crc.write_bytes(crc.read_bytes()[:-4])
    with pytest.raises(IndexedDataError, match="poses.crc holds 9 record checksums, the "
                                               "dataset 10"):
        ClipDataset(str(data))


def test_garbage_poses_and_a_swapped_frame_id_are_named_and_counted(tmp_path, caplog):
    """No checksums (a dataset preprocessed before them): the range and clip-table checks."""
    data = make_dataset(tmp_path / "data")  # takes of frames 0-7 and 8-15; clips 0-4, 5-9
    _set_pose(data, 2, 3e4)
    _swap_frame(data, 6, 1, 3)  # clip 6 (take 1) now shows take 0's frame 3
    ds = ClipDataset(str(data))
    assert "has no record checksums" in caplog.text
    assert "1 clips name frames outside their take or out of order" in caplog.text
    assert ds.bad_clip(6) == (f"{data}/clips.bin record 6: frames [9, 3, 11, 12] are not in "
                              "increasing order within take 1 (take1: frames 8 to 15)")
    batches = _micro_batches(data, 5)  # 5 x 4 = 20 draws: every clip twice
    bad = [m for b in batches for m in b["bad_records"]]
    assert any(f"{data}/poses.bin record 2: joint 3 of pose 7 lies 3e+04 m" in m for m in bad)
    assert any(f"{data}/clips.bin record 6: frames [9, 3, 11, 12]" in m for m in bad)
    assert sum(b["drawn"] for b in batches) == 20 + len(bad)  # each counted


@pytest.mark.pipeline
def test_training_on_damaged_data_names_and_counts_each_bad_record(tmp_path):
    data = _checksummed(make_dataset(tmp_path / "data"))
    flipped = _flip_exponent_bit(data, 4)  # one of the 10 pose records: bit rot
    _set_pose(data, 2, 3e4)  # another: garbage, in range of a float
    _swap_frame(data, 8, 3, 15)  # a frame id swapped for another valid one of the same take
    common = ["--config", "configs/tiny_cpu.yaml", *TINY, f"--data.egoexo4d_path={data}",
              "--schedule.train_iters=5", "--run.save_interval=5", "--optim.lr=1e-4"]
    ok = _pretrain(*common, f"--run.output_dir={tmp_path / 'ok'}",
                   "--data.max_bad_record_share=0.5")
    assert ok.returncode == exit_codes.FINISHED, ok.stderr[-3000:]
    for record in ("poses.bin record 4", "poses.bin record 2", "clips.bin record 8"):
        assert f"{data}/{record} does not match its crc32" in ok.stderr, (record, flipped)
    metrics = [json.loads(line) for line in (tmp_path / "ok" / "run" / "metrics.jsonl").open()]
    assert metrics[-1]["bad_records"] >= 3 and metrics[-1]["skipped_steps"] == 0
    # every pose record garbage: the run stops on bad data, not as "diverged"
    for clip in range(10):
        _set_pose(data, clip, 3e4, pose=0, joint=0)
    (data / "poses.crc").unlink()
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest[CHECKSUMS]["files"]["poses"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    stop = _pretrain(*common, f"--run.output_dir={tmp_path / 'stop'}")
    assert stop.returncode == exit_codes.STOPPED
    line = _one_error(stop)
    assert line.startswith("error: bad data: ") and "diverged" not in line
