"""One line, not a traceback, with the right exit code (issue 23 item 6): a disk filled by
another process while TensorBoard writes (rank 0) and the other rank losing its peer, resume with
a changed model, a run folder under a file, a truncated data manifest. (`--max_steps -3` is in
test_exit_codes.py, the k-NN feature cache in test_reliability_eval.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_ego.data.clips import ClipDataset
from megatron_ego.data.indexed import IndexedDataError
from megatron_ego.runtime import exit_codes

from .pretrain_runs import _free_port
from .reliability_data import TINY, make_dataset

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["launch/pretrain.py", "--config", "configs/tiny_cpu.yaml", "--ds_config",
            "configs/zero2.json", *TINY, f"--data.egoexo4d_path={data}",
            f"--run.output_dir={out}", "--optim.lr=1e-4", *extra]


def _env(rank: int = 0, world: int = 1, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    if world > 1:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env())


def _one_error(text: str) -> str:
    """The one `error:` line of a process's output, which holds no traceback."""
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    return errors[0]


def test_a_truncated_manifest_is_named(tmp_path):
    data = make_dataset(tmp_path / "data")
    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(IndexedDataError, match=f"{manifest} is not a readable manifest .*re-run "
                                               "preprocessing"):
        ClipDataset(str(data))


@pytest.mark.pipeline
@pytest.mark.parametrize("fault", ["output_dir_under_a_file", "truncated_manifest"])
def test_start_up_faults_are_one_line_and_exit_2(tmp_path, fault):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "runs"
    if fault == "output_dir_under_a_file":
        (tmp_path / "file").write_text("x")
        out, needle = tmp_path / "file" / "runs", "cannot create the run folder"
    else:
        manifest = data / "manifest.json"
        manifest.write_text(manifest.read_text()[:40])
        needle = f"{manifest} is not a readable manifest"
    proc = _pretrain(*_args(data, out, "--schedule.train_iters=2"))
    assert proc.returncode == exit_codes.INPUT_ERROR
    assert needle in _one_error(proc.stderr)


@pytest.mark.pipeline
def test_resume_with_a_changed_model_names_the_changed_field(tmp_path):
    data = make_dataset(tmp_path / "data")
    first = _pretrain(*_args(data, tmp_path, "--schedule.train_iters=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = _pretrain(*_args(data, tmp_path, "--schedule.train_iters=2",
                            "--model.num_layers=2"))
    assert proc.returncode == exit_codes.INPUT_ERROR
    line = _one_error(proc.stderr)
    assert "holds another model than this config (model.num_layers=2 here, 1 in the " \
           "checkpoint)" in line and "(--model.num_layers=1)" in line


# TensorBoard's record writer fails with ENOSPC on rank 0 from its 4th record on, as when another
# process fills the disk: its writer thread raises, the main thread meets it at the next write.
_TB_DISK_FULL = textwrap.dedent("""
    import errno, os, runpy, sys
    from tensorboard.summary.writer import record_writer

    original = record_writer.RecordWriter.write
    calls = [0]

    def write(self, data):
        calls[0] += 1
        if os.environ["RANK"] == "0" and calls[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    record_writer.RecordWriter.write = write
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.multiprocess
@pytest.mark.pipeline
def test_a_disk_filled_under_tensorboard_is_one_line_on_every_rank(tmp_path):
    data = make_dataset(tmp_path / "data")
    args = _args(data, tmp_path, "--schedule.train_iters=20", "--run.global_batch_size=4",
                 "--run.save_interval=100")
    port = _free_port()
    procs = [subprocess.Popen([PY, "-c", _TB_DISK_FULL, *args], cwd=ROOT, text=True,
                              env=_env(rank, 2, port), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for rank in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [exit_codes.STOPPED, exit_codes.CRASHED], logs
    line = _one_error(logs[0])
    assert line.startswith("error: No space left on device while writing") and \
        "tensorboard" in line and "resume" in line
    assert "lost contact with the other ranks" in _one_error(logs[1])
