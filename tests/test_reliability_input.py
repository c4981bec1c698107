"""Fault injection on the inputs of a run (issue 14, items 4, 5, 8, 10; docs/reliability.md):
divergence, damaged index files, records that fail to decode, bad configs, corrupt k-NN images.

Each test asserts the outcome a long job needs: the exit code, the one line printed, and that
no checkpoint or data was written or changed. End-to-end runs are one CPU rank of a tiny model
on a hand-built JPEG dataset (seconds to build, no video decoding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ego.data.clips import ClipDataset
from megatron_ego.data.indexed import IndexedDataError, open_indexed
from megatron_ego.runtime import exit_codes
from megatron_ego.training.guards import (
    BadRecords,
    SkippedSteps,
    TrainingStopped,
    check_finite_weights,
    nonfinite_weights,
)

from .reliability_data import TINY, J, P, T, make_dataset, make_two_class_imagefolder

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
@pytest.fixture()
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def _digests(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ------------------------------------------------------------------------- index integrity (5)
def _idx_layout(idx: Path) -> dict[str, int]:
    """Byte offsets of the arrays in a megatron MMIDIDX .idx file."""
    raw = idx.read_bytes()
    header = 9 + 8 + 1  # magic, version, dtype code
    n, m = np.frombuffer(raw[header:header + 16], dtype=np.int64)
    sizes = header + 16
    pointers = sizes + 4 * int(n)
    docs = pointers + 8 * int(n)
    return {"n": int(n), "m": int(m), "sizes": sizes, "pointers": pointers, "docs": docs}


def _flip(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, dtype, field, record", [
    ("poses", np.float32, "pointers", "middle"),   # the case: another clip's poses
    ("poses", np.float32, "sizes", "middle"),
    ("frames", np.uint8, "pointers", "middle"),    # the case: truncated image hours in
    ("frames", np.uint8, "sizes", "first"),
    ("frames", np.uint8, "docs", "middle"),
])
def test_one_flipped_byte_anywhere_in_an_idx_is_refused_at_open(dataset, name, dtype, field,
                                                                record):
    idx = dataset / f"{name}.idx"
    layout = _idx_layout(idx)
    count = layout["m"] if field == "docs" else layout["n"]
    i = count // 2 if record == "middle" else 0
    width = 4 if field == "sizes" else 8
    _flip(idx, layout[field] + width * i + 1)  # second byte: a change of 256 elements / bytes
    before = _digests(dataset)
    with pytest.raises(IndexedDataError) as err:
        open_indexed(str(dataset / name), dtype)
    message = str(err.value)
    assert f"{name}.idx is damaged" in message and "re-run preprocessing" in message
    assert "\n" not in message
    with pytest.raises(IndexedDataError, match=f"{name}.idx"):
        ClipDataset(str(dataset))  # the same at dataset level: nothing read from the records
    assert _digests(dataset) == before  # nothing rewritten


def test_a_clip_naming_frames_that_do_not_exist_is_refused_at_open(dataset):
    table = np.fromfile(dataset / "clips.bin", dtype=np.int64).reshape(-1, 2 + T)
    table[3, 4] = 10_000  # a frame id past the end (a damaged clips.bin)
    table.tofile(dataset / "clips.bin")
    with pytest.raises(IndexedDataError, match=r"clips\.bin: clip 3 names take .* re-run"):
        ClipDataset(str(dataset))


# -------------------------------------------------------------- records that fail to decode (5)
def _corrupt_frame(dataset: Path, record: int) -> None:
    """Overwrite the middle of a JPEG record with zeros (sizes unchanged: the .idx still fits)."""
    idx = open_indexed(str(dataset / "frames"), np.uint8).index
    start, size = int(idx.sequence_pointers[record]), int(idx.sequence_lengths[record])
    with open(dataset / "frames.bin", "r+b") as f:
        f.seek(start + 2)  # keep the SOI marker: PIL/torchvision start decoding, then fail
        f.write(b"\x00" * (size - 4))


def _micro_batches(dataset: Path, steps: int) -> list[dict]:
    from megatron_ego.config import load_config
    from megatron_ego.data.augment import MultiCropSpec
    from megatron_ego.data.loader import MicroBatchDataset
    from megatron_ego.data.on_device import to_device

    cfg = load_config("configs/tiny_cpu.yaml", TINY)
    data = MicroBatchDataset({"egoexo4d": ClipDataset(str(dataset))},
                             MultiCropSpec.from_config(cfg), seed=0, rank=0, world_size=1,
                             micro_batch_size=4, num_steps=T, poses_per_step=P, num_joints=J)
    return [to_device(data[k], torch.device("cpu")) for k in range(steps)]


def test_a_corrupt_jpeg_is_skipped_counted_and_named(dataset):
    clean = _micro_batches(dataset, 5)
    _corrupt_frame(dataset, 9)
    broken = _micro_batches(dataset, 5)
    bad = [m for b in broken for m in b["bad_records"]]
    assert bad and all("frames.bin record 9 (clip" in m for m in bad)
    assert sum(b["drawn"] for b in broken) == 5 * 4 + len(bad)
    for a, b in zip(clean, broken):
        assert b["frames"].shape == a["frames"].shape and torch.isfinite(b["frames"]).all()
        if not b["bad_records"]:  # micro-batches without the bad clip are untouched
            assert torch.equal(a["frames"], b["frames"])
    assert _micro_batches(dataset, 5)[0]["bad_records"] == broken[0]["bad_records"]  # repeatable


def test_bad_records_stop_the_run_past_the_configured_share():
    budget = BadRecords(share=0.01, dataset_records=1000)  # early on: 10 bad records allowed
    budget.add(skipped=10, drawn=500)
    with pytest.raises(TrainingStopped, match=r"bad data: 11 of 600 .*max_bad_record_share=0.01"):
        budget.add(skipped=1, drawn=100)
    later = BadRecords(share=0.01, dataset_records=100)
    later.add(skipped=0, drawn=10_000)
    later.add(skipped=99, drawn=100)  # 99 <= 0.01 x 10100
    with pytest.raises(TrainingStopped):
        BadRecords(share=0.0, dataset_records=10).add(skipped=1, drawn=4)


# -------------------------------------------------------------------------------- divergence (4)
def test_skipped_steps_stop_after_the_limit_in_a_row(caplog):
    skips = SkippedSteps(limit=3, is_main=True)
    for step, skipped in enumerate([True, True, False, True, True], start=1):
        skips.record(step, skipped, "inf/nan gradients")
    assert skips.total == 4 and skips.in_a_row == 2
    assert "step 5 skipped (inf/nan gradients): 2 in a row, 4 in this run" in caplog.text
    with pytest.raises(TrainingStopped, match=r"diverged: 3 optimizer steps in a row skipped"):
        skips.record(6, True, "inf/nan gradients")


def test_non_finite_weights_are_found_by_name():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_weights(net) == []
    check_finite_weights({"student": net}, step=1)
    with torch.no_grad():
        net[1].running_mean[0] = float("inf")
    assert nonfinite_weights(net) == ["1.running_mean"]
    with pytest.raises(TrainingStopped, match=r"non-finite weights at step 7 \(e\.g\. student"):
        check_finite_weights({"student": net}, step=7)


def _probe(mode: str, run_dir: Path, data: Path, *extra: str, **extra_env: str
           ) -> tuple[dict, str]:
    args = ["--config", "configs/tiny_cpu.yaml", "--ds_config", "configs/zero2.json", *TINY,
            f"--data.egoexo4d_path={data}", f"--run.output_dir={run_dir}", *extra]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(extra_env)
    out = subprocess.run([PY, "tests/reliability_probe.py", mode, *args], cwd=ROOT, text=True,
                         capture_output=True, timeout=600, env=env)  # one rank, plain python
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1][6:]), out.stderr


@pytest.mark.pipeline
def test_lr_1e6_stops_as_diverged_without_a_checkpoint_and_the_teacher_is_frozen_on_skips(
        dataset, tmp_path):
    result, stderr = _probe("diverge", tmp_path, dataset, "--schedule.train_iters=40",
                            "--run.save_interval=1", "--optim.max_skipped_steps=3")
    assert result["rc"] == exit_codes.STOPPED
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged: 3 optimizer steps in a row skipped" in errors[0]
    assert "lower optim.lr" in errors[0]
    steps = result["steps"]
    skipped = [s["step"] for s in steps if s["skipped"]]
    assert len(skipped) >= 3 and skipped[-3:] == [steps[-1]["step"] - 2, steps[-1]["step"] - 1,
                                                  steps[-1]["step"]]
    assert steps[-1]["step"] < 40  # stopped long before the end
    for before, after in zip(steps, steps[1:]):  # the EMA teacher moves only on real steps
        if after["skipped"]:
            assert after["teacher"] == before["teacher"], after
    assert f"step {skipped[0]} skipped (inf/nan gradients" in stderr  # on the console
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert metrics[-1]["skipped_steps"] == 2  # the step that stops the run is not logged
    checkpoints = tmp_path / "run" / "checkpoints"
    saved = sorted(int(p.name.split("_")[1]) for p in checkpoints.glob("step_*"))
    last_good = max(s["step"] for s in steps if not s["skipped"] and s["step"] > 0)
    assert saved and max(saved) == last_good  # interval saves wait while steps are skipped
    assert "checkpoint postponed until a step is not skipped" in stderr


@pytest.mark.pipeline
def test_a_non_finite_teacher_is_never_saved(dataset, tmp_path):
    result, stderr = _probe("nan_teacher", tmp_path, dataset, "--schedule.train_iters=2",
                            "--run.save_interval=100", "--optim.lr=1e-4")
    assert result["rc"] == exit_codes.STOPPED
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite weights at step 2 (e.g. teacher." in errors[0]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.glob("step_*")] == ["step_0000002"]  # only the good one


# ------------------------------------------------------------------------------------ configs (8)
def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "launch/pretrain.py", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=600)


def _one_error(out: subprocess.CompletedProcess) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("override, needle", [
    ("--optim.lr=nan", "optim.lr=nan must be a finite number"),
    ("--run.save_interval=0", "run.save_interval=0 must be >= 1"),
    ("--data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
    ("--run.name=../../x", "run.name='../../x' must be a plain folder name"),
    ("--data.global_crop_scale=[0.4,", "the value is not valid YAML"),
])
def test_bad_values_on_the_command_line_exit_2_with_one_line(tmp_path, override, needle):
    out = _pretrain("--config", "configs/tiny_cpu.yaml", f"--run.output_dir={tmp_path}", override)
    assert out.returncode == 2 and needle in _one_error(out)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_malformed_yaml_exits_2_naming_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: 2\n   hidden_size: [64\n")
    out = _pretrain("--config", str(bad))
    assert out.returncode == 2
    line = _one_error(out)
    assert f"config file '{bad}' is not valid YAML" in line and "at line 3" in line


@pytest.mark.multiprocess  # launch/pretrain.py in a subprocess (about 7 s)
@pytest.mark.parametrize("content, needle", [
    ("[1, 2]", "holds a JSON list, not an object of DeepSpeed settings"),
    ('{"zero_optimization": {"stage": 3}}', "zero_optimization.stage=3: this trainer supports "
                                            "ZeRO stage 2 only"),
])
def test_bad_ds_config_exits_2_before_any_process_group(tmp_path, content, needle):
    ds = tmp_path / "ds.json"
    ds.write_text(content)
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")  # passes the start-up presence check only
    out = _pretrain("--config", "configs/tiny_cpu.yaml", "--ds_config", str(ds),
                    f"--data.egoexo4d_path={data}", "--data.walking_tours_ratio=0",
                    f"--run.output_dir={tmp_path / 'runs'}")
    assert out.returncode == 2 and needle in _one_error(out)
    assert not (tmp_path / "runs").exists()


@pytest.mark.pipeline
def test_a_truncated_bin_found_when_training_opens_its_data_exits_2(dataset, tmp_path):
    with open(dataset / "poses.bin", "r+b") as f:
        f.truncate(os.path.getsize(dataset / "poses.bin") - 5)
    out = _pretrain("--config", "configs/tiny_cpu.yaml", *TINY, f"--data.egoexo4d_path={dataset}",
                    f"--run.output_dir={tmp_path / 'runs'}", "--schedule.train_iters=2")
    assert out.returncode == 2
    line = _one_error(out)
    assert "poses.bin holds" in line and "truncated" in line and "re-run preprocessing" in line
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


@pytest.mark.pipeline
def test_a_corrupt_jpeg_during_training_is_skipped_then_stops_the_run_past_the_share(
        dataset, tmp_path):
    _corrupt_frame(dataset, 9)  # in clips 5 and 6; 5 steps x 2 clips = one pass over the 10
    common = ["--config", "configs/tiny_cpu.yaml", *TINY, f"--data.egoexo4d_path={dataset}",
              "--schedule.train_iters=5", "--run.save_interval=1", "--optim.lr=1e-4"]
    before = _digests(dataset)
    ok = _pretrain(*common, f"--run.output_dir={tmp_path / 'ok'}", "--data.max_bad_record_share=0.5")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "bad record skipped, the next sample used instead" in ok.stderr
    assert f"{dataset}/frames.bin record 9 (clip" in ok.stderr
    metrics = [json.loads(line) for line in (tmp_path / "ok" / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5] and metrics[-1]["bad_records"] >= 1
    stop = _pretrain(*common, f"--run.output_dir={tmp_path / 'stop'}",
                     "--data.max_bad_record_share=0")
    assert stop.returncode == exit_codes.STOPPED
    line = _one_error(stop)
    assert line.startswith("error: bad data: 1 of") and "re-run preprocessing" in line
    stopped_at = len((tmp_path / "stop" / "run" / "metrics.jsonl").read_text().splitlines()) + 1
    saved = [int(p.name.split("_")[1]) for p in (tmp_path / "stop" / "run" / "checkpoints"
                                                  ).glob("step_*")]
    assert all(step < stopped_at for step in saved)
    assert _digests(dataset) == before  # the data is only read


# ------------------------------------------------------------------- k-NN on corrupt images (10)
class _MeanColourAgent:
    """Stands in for an exported EgoAgent: the feature of an image is its mean colour."""

    image_size = 16

    class cfg:  # noqa: N801 (mirrors agent.cfg.model.hidden_size)
        class model:  # noqa: N801
            hidden_size = 3

    @staticmethod
    def represent(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # [n, 3]


def test_knn_skips_and_names_a_truncated_jpeg_and_a_text_file(tmp_path, caplog):

    from megatron_ego.eval.run_knn import run_knn
    from megatron_ego.runtime.processes import Processes

    make_two_class_imagefolder(tmp_path)
    good = (tmp_path / "train" / "class0" / "0.jpg").read_bytes()
    truncated = tmp_path / "train" / "class1" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "val" / "class0" / "notes.jpg"
    text.write_text("not an image\n")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    ranks = Processes(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    caplog.set_level("WARNING")
    args = (_MeanColourAgent(), str(tmp_path / "train"), str(tmp_path / "val"), tmp_path / "out",
            ranks, str(model_dir))
    result = run_knn(*args, batch_size=4, workers=0, k=3)["egoagent"]
    assert result["skipped_train"] == 1 and result["skipped_val"] == 1
    assert result["num_train"] == 6 and result["num_val"] == 6
    assert result["top1"] == 100.0  # the readable images are classified as before
    assert f"skipped an unreadable image, {truncated}:" in caplog.text
    assert f"skipped an unreadable image, {text}:" in caplog.text
    again = run_knn(*args, batch_size=4, workers=0, k=3)["egoagent"]  # from the feature cache
    assert again == result
