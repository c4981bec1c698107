"""Fault injection on checkpoints (issue 14): a checkpoint that runs code when loaded, files
deleted or truncated under a COMPLETE marker, `latest` and run ids, `--resume none` in a used
folder, metrics.jsonl on resume, a full disk while saving, and resuming on another number of
data-parallel ranks (2 -> 1, 1 -> 2) with the optimizer state and the data position.

Runs are 4 steps of the shrunken tiny config of test_pretrain.py, started the way srun starts
them (one process per rank, gloo)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from megatron_ego.training import checkpoint as ckpt
from megatron_ego.training.metrics import truncate_metrics
from megatron_ego.training.resume import select_checkpoint

from .pretrain_runs import PY, ROOT, _args, _run, _start

pytestmark = [pytest.mark.multiprocess, pytest.mark.pipeline]

STEPS = ["--schedule.train_iters=4", "--run.save_interval=2"]


def _finish(procs: list[subprocess.Popen]) -> tuple[list[int], list[str]]:
    logs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], logs


def _ok(procs: list[subprocess.Popen]) -> list[str]:
    codes, logs = _finish(procs)
    assert codes == [0] * len(codes), logs[0][-3000:]
    return logs


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _metrics(run)}


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its content (to show nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    student = ckpt.safe_load(folder / "mp_rank_00_model_states.pt")["module"]
    teacher = ckpt.safe_load(folder / "trainer_state.pt")["teacher"]
    both = {f"student.{k}": v for k, v in student.items()}
    both.update({f"teacher.{k}": v for k, v in teacher.items()})
    return {k: v for k, v in both.items() if torch.is_tensor(v)}


@pytest.fixture(scope="module")
def straight(demo_data, tmp_path_factory) -> dict[int, Path]:  # noqa: F811
    """Uninterrupted 4-step runs on 2 ranks and on 1 rank (global batch 4), checkpoints at 2, 4."""
    runs = {}
    for world in (2, 1):
        out = tmp_path_factory.mktemp(f"straight{world}")
        _ok(_start(_args(demo_data, str(out), *STEPS, "--resume", "none"), world=world))
        runs[world] = out / "run"
    return runs


def _copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of a run folder (its own output_dir tmp_path/copy, run name 'run')."""
    target = tmp_path / "copy" / "run"
    shutil.copytree(run, target)
    return target


# ------------------------------------------------------------------------- another world size
@pytest.mark.parametrize("saved, resumed", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_run(demo_data, straight, tmp_path,  # noqa: F811
                                                        saved, resumed):
    source = straight[saved] / "checkpoints" / "step_0000002"
    logs = _ok(_start(_args(demo_data, str(tmp_path), *STEPS, "--resume", str(source)),
                      world=resumed))
    assert f"written by {saved} ranks, now {resumed}: optimizer state re-partitioned" in logs[0]
    reference, continued = _losses(straight[saved]), _losses(tmp_path / "run")
    assert sorted(continued) == [3, 4]  # the resumed run logs steps 3 and 4 only
    for step in (3, 4):  # the same samples, optimizer state and centers: fp32 rounding only
        assert continued[step] == pytest.approx(reference[step], rel=1e-5), (step, continued)
    manifest = ckpt.read_manifest(tmp_path / "run" / "checkpoints" / "step_0000004")
    assert manifest["world_size"] == resumed
    a = _weights(straight[saved] / "checkpoints" / "step_0000004")
    b = _weights(tmp_path / "run" / "checkpoints" / "step_0000004")
    assert a.keys() == b.keys()
    for key in a:  # Adam moments carried over: without them step 3 would move weights by ~lr
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_resume_needs_the_same_global_batch(demo_data, straight, tmp_path):  # noqa: F811
    source = straight[2] / "checkpoints" / "step_0000002"
    out = _run([PY, *_args(demo_data, str(tmp_path), *STEPS, "--resume", str(source),
                           "--run.global_batch_size=2")])
    assert out.returncode == 2
    errors = _errors(out.stderr)
    assert len(errors) == 1 and "run.global_batch_size=4" in errors[0], out.stderr[-2000:]


# ------------------------------------------------------------- a checkpoint that runs code
class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(folder: Path, marker: Path) -> None:
    """Replace trainer_state.pt by a pickle that runs a command, and re-sign COMPLETE (an
    attacker who can write the file can write the manifest too)."""
    state = ckpt.safe_load(folder / "trainer_state.pt")
    state["config"] = {"payload": _Payload(marker)}
    torch.save(state, folder / "trainer_state.pt")
    manifest = ckpt.read_manifest(folder)
    meta = {k: v for k, v in manifest.items() if k not in ("files", "format", "time")}
    ckpt.mark_complete(folder, meta)
    assert ckpt.verify(folder) is None


def test_a_malicious_trainer_state_is_refused_and_never_run(demo_data, straight, tmp_path):  # noqa: F811
    run = _copy_run(straight[2], tmp_path)
    folder = run / "checkpoints" / "step_0000004"
    marker = tmp_path / "pwned"
    _plant(folder, marker)
    with pytest.raises(ckpt.CheckpointError, match="refusing to unpickle"):
        ckpt.safe_load(folder / "trainer_state.pt")
    out = _run([PY, "launch/export.py", "--checkpoint", str(folder), "--out",
                str(tmp_path / "export")])
    assert out.returncode == 2
    errors = _errors(out.stderr)
    assert len(errors) == 1 and "refusing to unpickle" in errors[0], out.stderr[-2000:]
    assert not (tmp_path / "export").exists()
    before = _snapshot(run / "checkpoints")
    logs = _finish(_start(_args(demo_data, str(tmp_path / "copy"), *STEPS, "--resume", "auto"),
                          world=2))
    assert logs[0] == [2, 2]
    errors = _errors(logs[1][0])
    assert len(errors) == 1 and "trainer_state.pt" in errors[0], logs[1][0][-2000:]
    assert "refusing to unpickle" in errors[0]
    assert not marker.exists()  # nothing ran, in export or in resume
    assert _snapshot(run / "checkpoints") == before


def test_deepspeed_files_load_only_tensors(straight, tmp_path):
    from megatron_ego.training.checkpoint_io import _safe_checkpoint_engine_class

    engine = _safe_checkpoint_engine_class()()
    good = straight[2] / "checkpoints" / "step_0000004"
    state = engine.load(str(good / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    assert "single_partition_of_fp32_groups" in state["optimizer_state_dict"]
    marker = tmp_path / "pwned"
    bad = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _Payload(marker)}, bad)
    with pytest.raises(ckpt.CheckpointError, match="refusing to unpickle"):
        engine.load(str(bad))
    assert not marker.exists()


def test_no_weights_only_false_in_the_code():
    unsafe = "weights_only=" + "False"  # spelt in two parts so that this file is not a hit
    hits = [str(p) for d in ("megatron_ego", "launch") for p in (ROOT / d).rglob("*.py")
            if unsafe in p.read_text()]
    assert hits == []


# ----------------------------------------------------- COMPLETE verified, fallback, latest
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(straight, tmp_path, caplog, damage):
    run = _copy_run(straight[2], tmp_path)
    bad = run / "checkpoints" / "step_0000004" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:1000])
    else:
        bad.unlink()
    assert "zero_pp_rank_1" in ckpt.verify(bad.parent)
    with caplog.at_level(logging.WARNING):
        found, failed = ckpt.find_resume_checkpoint(run)
    assert found.name == "step_0000002"
    assert "step_0000004" in caplog.text and "zero_pp_rank_1" in caplog.text
    assert "falling back to checkpoint" in caplog.text and failed


def test_fallback_resume_reproduces_the_run_and_keeps_metrics_single(demo_data, straight,  # noqa: F811
                                                                     tmp_path):
    run = _copy_run(straight[2], tmp_path)
    bad = run / "checkpoints" / "step_0000004" / "trainer_state.pt"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated: a zip error before this change
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4]
    logs = _ok(_start(_args(demo_data, str(tmp_path / "copy"), *STEPS, "--resume", "auto"),
                      world=2))
    assert "does not verify" in logs[0] and "trainer_state.pt" in logs[0]
    assert f"resumed from {run / 'checkpoints' / 'step_0000002'}" in logs[0]
    steps = [r["step"] for r in _metrics(run)]
    assert steps == [1, 2, 3, 4]  # steps 3 and 4 were redone, and appear once
    assert _losses(run) == _losses(straight[2])  # bit-exact again
    assert ckpt.verify(run / "checkpoints" / "step_0000004") is None  # rewritten whole


def test_an_explicit_checkpoint_that_does_not_verify_is_a_one_line_error(demo_data, straight,  # noqa: F811
                                                                         tmp_path):
    run = _copy_run(straight[2], tmp_path)
    folder = run / "checkpoints" / "step_0000004"
    (folder / "rng_rank00001.pt").unlink()
    before = _snapshot(run)
    out = _run([PY, *_args(demo_data, str(tmp_path / "copy"), *STEPS, "--resume",
                           str(folder)), "--schedule.train_iters=6"])
    assert out.returncode == 2
    errors = _errors(out.stderr)
    assert len(errors) == 1 and "rng_rank00001.pt is missing" in errors[0], out.stderr[-2000:]
    assert _snapshot(run) == before


def test_latest_is_honoured_and_other_runs_are_never_taken(straight, tmp_path, caplog):
    run = _copy_run(straight[2], tmp_path)
    root = run / "checkpoints"
    ckpt.atomic_write_text(root / "latest", "step_0000002")  # e.g. resumed from step 2 later
    with caplog.at_level(logging.WARNING):
        found, _ = ckpt.find_resume_checkpoint(run, run_id=ckpt.read_run_id(run))
    assert found.name == "step_0000002"
    assert "ignoring checkpoint" in caplog.text and "step_0000004" in caplog.text
    # A checkpoint of another run (copied in) is never taken by `auto`.
    ckpt.atomic_write_text(root / "latest", "step_0000004")
    ckpt.write_run_id(run, "another-run")
    found, failed = ckpt.find_resume_checkpoint(run, run_id=ckpt.read_run_id(run))
    assert found is None and all("belongs to run" in f for f in failed)
    with pytest.raises(Exception, match="verifies"):
        select_checkpoint(str(run), "auto")


def test_resume_none_in_a_used_folder_is_refused(demo_data, straight, tmp_path):  # noqa: F811
    run = _copy_run(straight[2], tmp_path)
    before = _snapshot(run)
    out = _run([PY, *_args(demo_data, str(tmp_path / "copy"), *STEPS, "--resume", "none")])
    assert out.returncode == 2
    errors = _errors(out.stderr)
    assert len(errors) == 1, out.stderr[-2000:]
    assert "already holds checkpoints" in errors[0] and "--resume auto" in errors[0]
    assert "--overwrite" in errors[0]
    assert _snapshot(run) == before
    # --overwrite deletes them (and the metrics) explicitly.
    folder, run_id = select_checkpoint(str(run), "none", overwrite=True)
    assert folder is None and run_id != ckpt.read_manifest(
        straight[2] / "checkpoints" / "step_0000004")["run_id"]
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_truncate_metrics_drops_later_steps_and_torn_lines(tmp_path):
    lines = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "lo')
    assert truncate_metrics(str(tmp_path), 2) == 3
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2]
    assert truncate_metrics(str(tmp_path), 2) == 0


# -------------------------------------------------------------------------------- disk full
_DISK_FULL = textwrap.dedent("""
    import errno, io, runpy, sys
    from megatron_ego.checkpoint_format import files

    class Full(io.BufferedWriter):  # the disk fills up 1000 bytes into any step-4 file
        written = 0

        def write(self, data):
            Full.written += len(data)
            if Full.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def fake_open(path, mode="r", *args, **kwargs):
        if "step_0000004" in str(path) and "w" in mode and "b" in mode:
            return Full(io.FileIO(path, "w"))
        return open(path, mode, *args, **kwargs)

    files.open = fake_open  # shadows the builtin inside checkpoint_format/files.py only
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(
        demo_data, tmp_path):  # noqa: F811
    args = _args(demo_data, str(tmp_path), *STEPS, "--resume", "none")
    procs = _start(["-c", _DISK_FULL, *args], world=2)
    codes, logs = _finish(procs)
    assert codes == [1, 1], logs[0][-3000:]
    for log in logs:
        errors = _errors(log)
        assert len(errors) == 1, log[-3000:]
        assert "No space left on device while writing" in errors[0]
        assert "step_0000004" in errors[0] and "step_0000002 is intact" in errors[0]
    root = tmp_path / "run" / "checkpoints"
    assert not (root / "step_0000004").exists()  # removed, never marked complete
    assert (root / "latest").read_text() == "step_0000002"
    assert ckpt.verify(root / "step_0000002") is None
