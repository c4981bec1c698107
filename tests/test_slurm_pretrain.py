"""pretrain.sbatch and torchrun_node.sh with simulated SLURM variables (dry run and for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .slurm_fakes import (
    HOSTS,
    JOB_ID,
    REPO,
    SLURM_DIR,
    _dry_run,
    _env,
    _flag,
    _split_at,
    _write_exe,
)

# ---------------------------------------------------------------- pretrain.sbatch (dry run)

@pytest.mark.parametrize("nnodes", [1, 4, 6])
def test_pretrain_one_torchrun_per_node_rendezvous_on_first_host(fake_bin, nnodes):
    cmds = _dry_run("pretrain.sbatch", _env(fake_bin, nnodes))
    assert cmds[0] == ["rm", "-f", "runs/egoagent_300m/PREEMPTED"]
    assert len(cmds) == 2
    srun, rest = _split_at(cmds[1], "launch/slurm/torchrun_node.sh")
    torchrun, trainer = _split_at(rest, "launch/pretrain.py")
    assert srun[0] == "srun"
    assert _flag(srun, "--nodes") == str(nnodes)
    assert _flag(srun, "--ntasks") == str(nnodes)
    assert _flag(srun, "--ntasks-per-node") == "1"
    assert not any(a.startswith("--container") for a in srun)
    assert _flag(torchrun, "--nnodes") == str(nnodes)
    assert _flag(torchrun, "--nproc_per_node") == "8"
    assert _flag(torchrun, "--rdzv_backend") == "c10d"
    assert _flag(torchrun, "--rdzv_endpoint") == f"{HOSTS[0]}:29500"
    assert _flag(torchrun, "--rdzv_id") == JOB_ID
    assert _flag(trainer, "--resume") == "auto"
    assert _flag(trainer, "--ds_config") == "configs/zero2.json"
    assert _flag(trainer, "--config") == "configs/egoagent_300m.yaml"


def test_pretrain_world_size_follows_gpus_on_node_and_overrides_pass_through(fake_bin):
    env = _env(fake_bin, 3, SLURM_GPUS_ON_NODE="4", MASTER_PORT="31000",
               CONFIG="configs/egoagent_1b.yaml")
    cmds = _dry_run("pretrain.sbatch", env, "--optim.lr=3e-4", "--run.log_interval=5")
    _, rest = _split_at(cmds[-1], "launch/slurm/torchrun_node.sh")
    torchrun, trainer = _split_at(rest, "launch/pretrain.py")
    world = int(_flag(torchrun, "--nnodes")) * int(_flag(torchrun, "--nproc_per_node"))
    assert world == 12
    assert _flag(torchrun, "--rdzv_endpoint") == f"{HOSTS[0]}:31000"
    assert _flag(trainer, "--config") == "configs/egoagent_1b.yaml"
    assert "--run.name=egoagent_1b" in trainer
    assert trainer[-2:] == ["--optim.lr=3e-4", "--run.log_interval=5"]
    assert cmds[0] == ["rm", "-f", "runs/egoagent_1b/PREEMPTED"]


@pytest.mark.parametrize(("output_dir", "run_dir"), [
    ("/lustre/runs", "/lustre/runs/exp1"),
    ("/lustre/runs/exp1", "/lustre/runs/exp1"),  # output_dir already ends with the run name
])
def test_pretrain_run_dir_matches_the_trainer(fake_bin, output_dir, run_dir):
    env = _env(fake_bin, OUTPUT_DIR=output_dir, RUN_NAME="exp1")
    cmds = _dry_run("pretrain.sbatch", env)
    assert cmds[0] == ["rm", "-f", f"{run_dir}/PREEMPTED"]
    assert f"--run.output_dir={output_dir}" in cmds[1]
    assert "--run.name=exp1" in cmds[1]


def test_pretrain_command_parses_and_its_run_dir_is_the_trainers(fake_bin):
    """The printed trainer arguments go through launch/pretrain.py's own parser and config loader,
    and the PREEMPTED marker the script watches lies in the trainer's run directory."""
    from launch.pretrain import parse_args
    from megatron_ego.config import load_config
    from megatron_ego.training.trainer import PREEMPTED, run_dir_of

    env = _env(fake_bin, OUTPUT_DIR="/lustre/runs", RUN_NAME="exp1")
    rm, launch = _dry_run("pretrain.sbatch", env, "--optim.lr=3e-4")
    _, trainer_argv = _split_at(launch, "launch/pretrain.py")
    args, overrides = parse_args(trainer_argv)
    assert (args.resume, args.ds_config) == ("auto", "configs/zero2.json")
    cfg = load_config(str(REPO / args.config), overrides)
    assert cfg.optim.lr == 3e-4
    assert rm == ["rm", "-f", str(Path(run_dir_of(cfg)) / PREEMPTED)]


def test_pretrain_container_flags_only_when_image_set(fake_bin):
    env = _env(fake_bin, CONTAINER_IMAGE="/shared/ego.sqsh", CONTAINER_MOUNTS="/lustre:/lustre")
    srun, _ = _split_at(_dry_run("pretrain.sbatch", env)[1], "launch/slurm/torchrun_node.sh")
    assert _flag(srun, "--container-image") == "/shared/ego.sqsh"
    assert _flag(srun, "--container-mounts").split(",") == [f"{REPO}:{REPO}", "/lustre:/lustre"]
    assert _flag(srun, "--container-workdir") == str(REPO)


def test_pretrain_without_slurm_variables_says_to_use_sbatch(fake_bin):
    env = _env(fake_bin)
    del env["SLURM_JOB_NODELIST"]
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch")], env={**env, "DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "SLURM_JOB_NODELIST" in proc.stderr and "sbatch" in proc.stderr
    assert proc.stdout == ""


def test_sbatch_headers_signal_requeue_and_come_before_any_command():
    for script in ("pretrain.sbatch", "preprocess.sbatch", "evaluate.sbatch"):
        lines = (SLURM_DIR / script).read_text().splitlines()
        assert lines[0] == "#!/bin/bash"
        directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
        first_command = next(i for i, line in enumerate(lines)
                             if line.strip() and not line.startswith("#"))
        assert directives and max(directives) < first_command, script  # sbatch stops reading there
    header = (SLURM_DIR / "pretrain.sbatch").read_text()
    for directive in ("--signal=B:USR1@120", "--requeue", "--ntasks-per-node=1",
                      "--gpus-per-node=8", "--open-mode=append"):
        assert f"#SBATCH {directive}\n" in header


# ------------------------------------------------------ pretrain.sbatch: preemption, for real

FAKE_SRUN = """#!/bin/bash
# Stands in for srun + trainer: logs its arguments; on SIGUSR1 "checkpoints" (PREEMPTED) and exits 0.
echo "args $*" >> "$FAKE_LOG"
run_dir=$FAKE_RUN_DIR
on_usr1() {
    echo "got USR1" >> "$FAKE_LOG"
    if [[ "$FAKE_MODE" == "checkpoint" ]]; then mkdir -p "$run_dir" && touch "$run_dir/PREEMPTED"; fi
    exit 0
}
trap on_usr1 USR1
echo "started" >> "$FAKE_LOG"
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


@pytest.mark.parametrize(("mode", "requeued"), [("checkpoint", True), ("no_marker", False)])
def test_usr1_is_forwarded_and_requeues_only_after_a_checkpoint(fake_bin, tmp_path, mode, requeued):
    env = _preemption_env(fake_bin, tmp_path, mode)
    log = tmp_path / "srun.log"
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "pretrain.sbatch")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: log.exists() and "started" in log.read_text(), "the fake srun")
        proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "got USR1" in log.read_text()
    assert (tmp_path / "runs" / "exp" / "PREEMPTED").exists() == requeued
    assert _requeues(tmp_path) == ([f"requeue {JOB_ID}"] if requeued else [])


def test_normal_end_removes_stale_marker_and_does_not_requeue(fake_bin, tmp_path):
    env = _preemption_env(fake_bin, tmp_path, "exit", rc=0)
    stale = tmp_path / "runs" / "exp" / "PREEMPTED"
    stale.parent.mkdir(parents=True)
    stale.touch()
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert _requeues(tmp_path) == []


def test_launcher_failure_is_the_job_exit_code(fake_bin, tmp_path):
    env = _preemption_env(fake_bin, tmp_path, "exit", rc=3)
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
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
# Stands in for a training process: on SIGUSR1 it checkpoints and exits 0 (gives up after 60 s).
import os, signal, sys, time
from pathlib import Path
requested = []
signal.signal(signal.SIGUSR1, lambda *_: requested.append(1))
rank = os.environ.get("LOCAL_RANK", "0")
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
sys.exit(0)
"""


def _run_wrapper_and_signal(tmp_path: Path, args: list[str], env: dict[str, str], nworkers: int,
                            step_wide: bool) -> subprocess.CompletedProcess:
    """Start torchrun_node.sh in its own session, wait for the workers, send SIGUSR1."""
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "torchrun_node.sh"), *args], env=env,
                            cwd=REPO, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: all((tmp_path / f"ready{r}").exists() for r in range(nworkers)),
                  "the workers", timeout=120)
        if step_wide:  # SLURM signals every process of the step, torchrun included
            os.killpg(proc.pid, signal.SIGUSR1)
        else:
            proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("step_wide", [False, True], ids=["to-wrapper", "to-whole-step"])
def test_torchrun_node_hands_usr1_to_workers_and_torchrun_survives(tmp_path, step_wide):
    worker = _write_exe(tmp_path / "worker.py", FAKE_WORKER.format(
        python=sys.executable, ready=str(tmp_path / "ready"), done=str(tmp_path / "done")))
    torchrun = _write_exe(tmp_path / "torchrun", FAKE_TORCHRUN.format(
        python=sys.executable, worker=str(worker)))
    args = ["--nnodes", "2", "--nproc_per_node", "8", "launch/pretrain.py", "--resume", "auto"]
    env = {**os.environ, "TORCHRUN": str(torchrun)}
    proc = _run_wrapper_and_signal(tmp_path, args, env, 1, step_wide)
    # 128 + SIGUSR1 here would mean torchrun died of the signal instead of waiting for its worker.
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "done0").exists()
    assert (tmp_path / "torchrun.args").read_text().splitlines() == args


@pytest.mark.multiprocess
def test_torchrun_node_with_the_real_torchrun(tmp_path):
    """The real torchrun dies of SIGUSR1 and starts its workers in sessions of their own; through
    the wrapper, both workers checkpoint and the node's launcher exits 0."""
    worker = _write_exe(tmp_path / "worker.py", FAKE_WORKER.format(
        python=sys.executable, ready=str(tmp_path / "ready"), done=str(tmp_path / "done")))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    args = ["--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "localhost:0", "--max_restarts", "0", str(worker)]
    proc = _run_wrapper_and_signal(tmp_path, args, env, 2, step_wide=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()




def test_pretrain_labels_ranks_sizes_workers_and_names_the_container(fake_bin):
    env = _env(fake_bin, 2, SLURM_CPUS_ON_NODE="96", CONTAINER_IMAGE="/shared/ego.sqsh")
    srun, rest = _split_at(_dry_run("pretrain.sbatch", env)[1], "launch/slurm/torchrun_node.sh")
    assert "--label" in srun  # each line of the step says which node printed it
    assert _flag(srun, "--container-name") == f"egoagent-{JOB_ID}"  # reused after a requeue
    assert "--data.num_workers=11" in rest  # 96 CPUs / 8 GPUs - 1 for the training process
    env_one_cpu = _env(fake_bin, 2, SLURM_CPUS_ON_NODE="4")
    cmd = _dry_run("pretrain.sbatch", env_one_cpu, "--data.num_workers=3")[1]
    workers = [a for a in cmd if a.startswith("--data.num_workers=")]
    assert workers == ["--data.num_workers=1", "--data.num_workers=3"]  # the user's comes last
