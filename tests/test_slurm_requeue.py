"""pretrain.sbatch's preemption path for real against a fake srun (SIGUSR1 -> checkpoint ->
requeue, exit codes), torchrun_node.sh against a fake and the real torchrun, and
launch/torchrun_exit.py. The same against a real SLURM cluster: test_slurm_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.torchrun_exit import worker_exit_code

from .slurm_fakes import JOB_ID, REPO, SLURM_DIR, _datasets, _env, _write_exe

# each case runs the sbatch script (bash, then launch/pretrain.py --check): about 2 s, so
# make test-fast leaves them to make test
pytestmark = pytest.mark.multiprocess

FAKE_SRUN = """#!/bin/bash
# Stands in for srun + trainer: logs its arguments and environment; on SIGUSR1 (or SIGTERM)
# "checkpoints" (PREEMPTED, in mode checkpoint) and exits 0 (checkpoint_slowly: only at SIGTERM);
# in mode exit, exits FAKE_RC at once.
echo "args $*" >> "$FAKE_LOG"
echo "env PYTHONFAULTHANDLER=$PYTHONFAULTHANDLER DEEPSPEED_TIMEOUT=$DEEPSPEED_TIMEOUT" >> "$FAKE_LOG"
run_dir=$FAKE_RUN_DIR
on_signal() {
    echo "got $1" >> "$FAKE_LOG"
    if [[ "$FAKE_MODE" == checkpoint* ]]; then mkdir -p "$run_dir" && touch "$run_dir/PREEMPTED"; fi
    if [[ "$FAKE_MODE" == "checkpoint_slowly" && "$1" == "USR1" ]]; then return; fi  # until TERM
    exit 0
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
echo "started $$" >> "$FAKE_LOG"
if [[ "$FAKE_MODE" == "exit" ]]; then exit "$FAKE_RC"; fi
for _ in $(seq 1200); do sleep 0.05; done  # gives up after a minute, should a test fail
exit 99
"""


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _preemption_env(fake_bin: Path, tmp_path: Path, mode: str, rc: int = 0) -> dict[str, str]:
    _write_exe(fake_bin / "srun", FAKE_SRUN)
    out = tmp_path / "runs"
    return _env(fake_bin, 2, OUTPUT_DIR=str(out), RUN_NAME="exp", FAKE_LOG=str(tmp_path / "srun.log"),
                FAKE_RUN_DIR=str(out / "exp"), FAKE_MODE=mode, FAKE_RC=str(rc))


def _requeues(tmp_path: Path) -> list[str]:
    log = tmp_path / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


def _start(fake_bin: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SLURM_DIR / "pretrain.sbatch"), *_datasets(fake_bin)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _srun_pid(log: Path) -> int:
    # (the script's fail-fast check runs first: a Python start, slow on a busy machine)
    _wait_for(lambda: log.exists() and "started" in log.read_text(), "the fake srun", 120)
    return int(log.read_text().split("started ")[1].split()[0])


@pytest.mark.parametrize(("mode", "requeued"), [("checkpoint", True), ("no_marker", False)])
def test_usr1_is_forwarded_and_requeues_only_after_a_checkpoint(fake_bin, tmp_path, mode, requeued):
    env = _preemption_env(fake_bin, tmp_path, mode)
    log = tmp_path / "srun.log"
    proc = _start(fake_bin, env)
    try:
        _srun_pid(log)
        proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == (75 if requeued else 0), err
    assert "got USR1" in log.read_text()
    assert (tmp_path / "runs" / "exp" / "PREEMPTED").exists() == requeued
    assert _requeues(tmp_path) == ([f"requeue {JOB_ID}"] if requeued else [])


def test_scancel_sigterm_checkpoints_but_does_not_requeue(fake_bin, tmp_path):
    """scancel (or SLURM's own preemption) sends SIGTERM to the batch shell and the step: the
    trainer checkpoints, the job is not requeued by the script (a new submission resumes)."""
    env = _preemption_env(fake_bin, tmp_path, "checkpoint")
    log = tmp_path / "srun.log"
    proc = _start(fake_bin, env)
    try:
        srun = _srun_pid(log)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        os.kill(srun, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert "got TERM" in log.read_text()
    assert _requeues(tmp_path) == []
    assert "not requeueing" in out + err  # the job's output (copied to the run folder's log)


def test_time_limit_sigterm_after_the_warning_still_requeues(fake_bin, tmp_path):
    """A checkpoint slower than the warning's 120 s: SLURM's SIGTERM at the time limit comes
    after SIGUSR1; the run is preempted, not cancelled, so the job still requeues itself."""
    env = _preemption_env(fake_bin, tmp_path, "checkpoint_slowly")
    log = tmp_path / "srun.log"
    proc = _start(fake_bin, env)
    try:
        srun = _srun_pid(log)
        proc.send_signal(signal.SIGUSR1)
        _wait_for(lambda: "got USR1" in log.read_text(), "the warning to reach the step")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        os.kill(srun, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert _requeues(tmp_path) == [f"requeue {JOB_ID}"]


def test_exit_75_requeues_without_a_marker(fake_bin, tmp_path):
    """The trainer's planned code for a signal's checkpoint (passed through torchrun by
    launch/torchrun_exit.py) requeues even when no marker is seen."""
    env = _preemption_env(fake_bin, tmp_path, "exit", rc=75)
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch"), *_datasets(fake_bin)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert _requeues(tmp_path) == [f"requeue {JOB_ID}"]


def test_normal_end_removes_stale_marker_and_does_not_requeue(fake_bin, tmp_path):
    env = _preemption_env(fake_bin, tmp_path, "exit", rc=0)
    stale = tmp_path / "runs" / "exp" / "PREEMPTED"
    stale.parent.mkdir(parents=True)
    stale.touch()
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch"), *_datasets(fake_bin)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert _requeues(tmp_path) == []
    # the step's environment: faulthandler on, a collective timeout set
    assert "env PYTHONFAULTHANDLER=1 DEEPSPEED_TIMEOUT=30" in (tmp_path / "srun.log").read_text()


@pytest.mark.parametrize("rc", [1, 2, 3])
def test_the_trainers_failure_is_the_job_exit_code(fake_bin, tmp_path, rc):
    env = _preemption_env(fake_bin, tmp_path, "exit", rc=rc)
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch"), *_datasets(fake_bin)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == rc
    assert _requeues(tmp_path) == []


# ------------------------------------------------------------------ torchrun_node.sh, for real

FAKE_TORCHRUN = """#!{python}
# Stands in for torchrun: records argv, starts one worker, exits with the worker's status.
# It installs no SIGUSR1 handler, like the real torchrun.
import subprocess, sys
open(sys.argv[0] + ".args", "w").write("\\n".join(sys.argv[1:]))
worker = subprocess.Popen([{python!r}, {worker!r}])
sys.exit(worker.wait())
"""

FAKE_WORKER = """#!{python}
# Stands in for a training process: on SIGUSR1 it checkpoints and exits EXIT (gives up after 60 s).
import os, signal, sys, time
from pathlib import Path
requested = []
signal.signal(signal.SIGUSR1, lambda *_: requested.append(1))
rank = os.environ.get("LOCAL_RANK", "0")
print("rank", os.environ.get("RANK", "?"), "says hello", flush=True)
Path({ready!r} + rank).touch()
deadline = time.monotonic() + 60
while not requested and time.monotonic() < deadline:
    time.sleep(0.02)
if not requested:
    sys.exit(99)
Path({done!r} + rank).write_text(str(len(requested)))
# A step-wide signal arrives twice (SLURM's, then the wrapper's copy); like the trainer, ignore
# late copies while exiting (at interpreter shutdown the handler reverts to the default: die).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
sys.exit({exit_code})
"""


def _worker(tmp_path: Path, exit_code: int = 0) -> Path:
    return _write_exe(tmp_path / "worker.py", FAKE_WORKER.format(
        python=sys.executable, ready=str(tmp_path / "ready"), done=str(tmp_path / "done"),
        exit_code=exit_code))


def _run_wrapper_and_signal(tmp_path: Path, args: list[str], env: dict[str, str], nworkers: int,
                            step_wide: bool) -> subprocess.CompletedProcess:
    """Start torchrun_node.sh in its own session, wait for the workers, send SIGUSR1."""
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "torchrun_node.sh"), *args], env=env,
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: all((tmp_path / f"ready{r}").exists() for r in range(nworkers)),
                  "the workers", timeout=120)
        if step_wide:  # SLURM signals every process of the step, torchrun included
            os.killpg(proc.pid, signal.SIGUSR1)
        else:
            proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("step_wide", [False, True], ids=["to-wrapper", "to-whole-step"])
def test_torchrun_node_hands_usr1_to_workers_and_torchrun_survives(tmp_path, step_wide):
    torchrun = _write_exe(tmp_path / "torchrun", FAKE_TORCHRUN.format(
        python=sys.executable, worker=str(_worker(tmp_path))))
    args = ["--nnodes", "2", "--nproc_per_node", "8", "launch/pretrain.py", "--resume", "auto"]
    env = {**os.environ, "TORCHRUN": str(torchrun)}
    env.pop("SLURM_NODEID", None)
    proc = _run_wrapper_and_signal(tmp_path, args, env, 1, step_wide)
    # 128 + SIGUSR1 here would mean torchrun died of the signal instead of waiting for its worker.
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "done0").exists()
    assert (tmp_path / "torchrun.args").read_text().splitlines() == args


@pytest.mark.parametrize("node", ["0", "1"])
def test_torchrun_node_numbers_the_node_and_logs_every_rank(tmp_path, node):
    """Node N is torchrun's --node_rank N (static rendezvous: ranks in SLURM's node order); with
    --logs DIR every rank writes its own files under DIR/nodeN, and only node 0 tees its local
    rank 0 (global rank 0) to the console."""
    torchrun = _write_exe(tmp_path / "torchrun", FAKE_TORCHRUN.format(
        python=sys.executable, worker=str(_worker(tmp_path))))
    env = {**os.environ, "TORCHRUN": str(torchrun), "SLURM_NODEID": node}
    args = ["--nnodes", "2", "--nproc_per_node", "8", "launch/pretrain.py"]
    _run_wrapper_and_signal(tmp_path, ["--logs", "/runs/x/logs/pretrain-7", *args], env, 1, False)
    tee = ["--tee", "0:3"] if node == "0" else []
    assert (tmp_path / "torchrun.args").read_text().splitlines() == [
        "--node_rank", node, "--log-dir", f"/runs/x/logs/pretrain-7/node{node}", "--redirects", "3",
        *tee, *args]


@pytest.mark.multiprocess
def test_torchrun_node_with_the_real_torchrun(tmp_path):
    """The real torchrun dies of SIGUSR1 and starts its workers in sessions of their own; through
    the wrapper (and launch/torchrun_exit.py), both workers checkpoint, each rank's output lands in
    its own log file, rank 0's on the console too, and the node exits with the workers' code."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_NODEID": "0"}
    logs = tmp_path / "logs"
    args = ["--logs", str(logs), "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend",
            "c10d", "--rdzv_endpoint", "localhost:0", "--max_restarts", "0",
            str(_worker(tmp_path, exit_code=75))]
    proc = _run_wrapper_and_signal(tmp_path, args, env, 2, step_wide=True)
    assert proc.returncode == 75, proc.stderr[-3000:]  # the workers' code, not torchrun's 1
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()
    stdout = {p.parent.name: p.read_text() for p in logs.glob("node0/*/attempt_0/*/stdout.log")}
    assert set(stdout) == {"0", "1"}
    assert "rank 0 says hello" in stdout["0"] and "rank 1 says hello" in stdout["1"]
    assert "rank 0 says hello" in proc.stdout and "rank 1" not in proc.stdout


def test_worker_exit_code_is_the_first_failures():
    class Failure:
        def __init__(self, exitcode, timestamp):
            self.exitcode, self.timestamp = exitcode, timestamp

    assert worker_exit_code({0: Failure(75, 2), 1: Failure(75, 1)}) == 75
    assert worker_exit_code({0: Failure(-15, 5), 3: Failure(2, 1)}) == 2  # the root cause
    assert worker_exit_code({2: Failure(-9, 1)}) == 128 + 9  # killed by SIGKILL
    assert worker_exit_code({}) == 1
