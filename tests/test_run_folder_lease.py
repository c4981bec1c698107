"""The run-folder lease (issue 23 item 1), unit by unit: a live holder refuses, a gone one is taken
over with its reason (dead PID on this host, ended SLURM job, expired on another host, the same
job requeued), concurrent takers leave exactly one holder, and a holder that lost the lease
knows it. The end-to-end races of two training jobs are in test_reliability_lease.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from megatron_ego.config import ConfigError
from megatron_ego.training.lease import (
    LEASE_FILE,
    Holder,
    LeaseRefused,
    RunFolderLease,
    gone_reason,
)

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from megatron_ego.training.lease import RunFolderLease
lease = RunFolderLease.acquire(sys.argv[1], renew_s=0.2, expiry_s=5)
print("held", flush=True)
time.sleep(600)
"""


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _write_lease(run: Path, **fields) -> Holder:
    holder = Holder.me(expiry_s=600)
    for key, value in fields.items():
        setattr(holder, key, value)
    run.mkdir(parents=True, exist_ok=True)
    (run / LEASE_FILE).write_text(json.dumps(asdict(holder)))
    return holder


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


def _fake_slurm(tmp_path: Path, monkeypatch, squeue: str | None, sacct: str | None) -> None:
    """squeue/sacct on PATH that print the given text (None: not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("squeue", squeue), ("sacct", sacct)):
        if text is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\nprintf '%s' '{text}'\n")
            (bin_dir / name).chmod(0o755)
    keep = [d for d in os.environ["PATH"].split(os.pathsep)
            if not (Path(d) / "squeue").exists() and not (Path(d) / "sacct").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), *keep]))


@pytest.mark.multiprocess
def test_a_live_holder_refuses_and_its_death_frees_the_folder(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _python(HOLD, str(run))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseRefused) as refused:
            RunFolderLease.acquire(run)
        message = str(refused.value)
        assert "\n" not in message and f"PID {holder.pid}" in message and "in use by" in message
        time.sleep(0.5)  # the holder renews meanwhile: its lease stays its own
        assert json.loads((run / LEASE_FILE).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING):
        lease = RunFolderLease.acquire(run)
    assert f"PID {holder.pid} is not running on host" in caplog.text
    assert json.loads((run / LEASE_FILE).read_text())["pid"] == os.getpid()
    lease.release()
    assert not (run / LEASE_FILE).exists()


def test_an_expired_lease_on_another_host_is_taken_and_a_fresh_one_is_not(tmp_path, caplog):
    run = tmp_path / "run"
    _write_lease(run, host="elsewhere", pid=1, renewed=time.time() - 30)
    with pytest.raises(LeaseRefused, match="on host elsewhere, PID 1, since .* renewed 30 s ago"):
        RunFolderLease.acquire(run, expiry_s=600)
    _write_lease(run, host="elsewhere", pid=1, renewed=time.time() - 700)
    with caplog.at_level(logging.WARNING):
        RunFolderLease.acquire(run, expiry_s=600).release()
    assert "its lease expired: not renewed for 700 s (> 600 s)" in caplog.text


@pytest.mark.parametrize("squeue, sacct, taken", [
    ("RUNNING", None, False),
    ("PENDING", "PENDING", False),
    ("", None, True),                # no longer listed, no accounting to ask
    ("", "COMPLETED", True),
    ("", "CANCELLED by 0", True),
    (None, "TIMEOUT", True),          # no squeue on this host
])
def test_the_holders_slurm_job_decides(tmp_path, monkeypatch, squeue, sacct, taken):
    _fake_slurm(tmp_path, monkeypatch, squeue, sacct)
    run = tmp_path / "run"
    _write_lease(run, host="node7", pid=1, slurm_job_id="4242")  # renewed just now
    if taken:
        RunFolderLease.acquire(run).release()
        assert not (run / LEASE_FILE).exists()
    else:
        with pytest.raises(LeaseRefused, match="SLURM job 4242 on host node7"):
            RunFolderLease.acquire(run)


def test_a_requeued_job_takes_over_from_its_earlier_incarnation(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    _write_lease(run, host="node1", pid=99, slurm_job_id="77", slurm_restart_count="0")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level(logging.WARNING):
        lease = RunFolderLease.acquire(run)
    assert "this job's own earlier incarnation (SLURM job 77 requeued: restart 0 -> 1)" in caplog.text
    assert json.loads((run / LEASE_FILE).read_text())["slurm_restart_count"] == "1"
    lease.release()


def test_gone_reason_keeps_a_live_local_process_even_when_its_lease_is_old():
    me = Holder.me(expiry_s=1)
    other = Holder.me(expiry_s=1)
    other.pid, other.pid_start = os.getppid(), ""  # our parent: alive, on this host
    other.renewed = time.time() - 3600
    assert gone_reason(other, me, time.time()) is None


@pytest.mark.multiprocess
@pytest.mark.parametrize("stale", [False, True])
def test_of_many_jobs_taking_the_lease_at_once_exactly_one_holds_it(tmp_path, stale):
    run = tmp_path / "run"
    if stale:  # all of them race to take over a dead holder's lease
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
        _write_lease(run, pid=int(dead.stdout), pid_start="")
    code = """
import sys, time
from megatron_ego.training.lease import LeaseRefused, RunFolderLease
while time.time() < float(sys.argv[2]):
    pass
try:
    lease = RunFolderLease.acquire(sys.argv[1], renew_s=0.1, expiry_s=60)
    print("held", flush=True)
    time.sleep(3)
except LeaseRefused as err:
    print("refused", flush=True)
"""
    start = str(time.time() + 4)  # every process past its imports by then
    procs = [_python(code, str(run), start) for _ in range(6)]
    outcomes = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outcomes) == ["held"] + ["refused"] * 5, [p.stderr for p in procs]


def test_a_holder_whose_lease_was_taken_knows_it(tmp_path):
    run = tmp_path / "run"
    lease = RunFolderLease.acquire(run, renew_s=3600)
    lease.renew()
    assert lease.lost is None
    other = _write_lease(run, host="elsewhere", pid=5)
    lease.renew()
    assert lease.lost is not None and lease.lost.token == other.token
    assert "taken over by a job on host elsewhere, PID 5" in lease.lost_message()
    lease.release()
    assert json.loads((run / LEASE_FILE).read_text())["token"] == other.token  # not ours to delete


def test_a_damaged_lease_file_is_taken_over_once_it_is_old(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LEASE_FILE).write_text("{not json")
    with pytest.raises(LeaseRefused):  # could be being written right now
        RunFolderLease.acquire(run, attempts=1)
    old = time.time() - 60
    os.utime(run / LEASE_FILE, (old, old))
    RunFolderLease.acquire(run).release()


def test_a_run_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the run folder .*/file/run"):
        RunFolderLease.acquire(tmp_path / "file" / "run")
