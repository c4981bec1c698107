"""pretrain.sbatch with simulated SLURM variables (DRY_RUN=1: the commands it would run), and its
fail-fast check; the preemption path is in test_slurm_requeue.py, the real cluster in
test_slurm_cluster.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .slurm_fakes import (
    ADDRS,
    JOB_ID,
    REPO,
    SLURM_DIR,
    _datasets,
    _dry_run,
    _env,
    _flag,
    _split_at,
)

# each case runs the sbatch script (bash, then launch/pretrain.py --check): about 2 s, so
# make test-fast leaves them to make test
pytestmark = pytest.mark.multiprocess


def _launch(cmds: list[list[str]]) -> tuple[list[str], list[str], list[str]]:
    """The srun line's (srun options, torchrun_node.sh options, trainer argv)."""
    srun, rest = _split_at(cmds[-1], "launch/slurm/torchrun_node.sh")
    torchrun, trainer = _split_at(rest, "launch/pretrain.py")
    return srun, torchrun, trainer


@pytest.mark.parametrize("nnodes", [1, 4, 6])
def test_pretrain_one_torchrun_per_node_rendezvous_on_first_address(fake_bin, nnodes):
    cmds = _dry_run("pretrain.sbatch", _env(fake_bin, nnodes), *_datasets(fake_bin))
    assert cmds[0] == ["rm", "-f", "runs/egoagent_300m/PREEMPTED"]
    assert len(cmds) == 2
    srun, torchrun, trainer = _launch(cmds)
    assert srun[0] == "srun"
    assert _flag(srun, "--nodes") == str(nnodes)
    assert _flag(srun, "--ntasks") == str(nnodes)
    assert _flag(srun, "--ntasks-per-node") == "1"
    assert not any(a.startswith("--container") for a in srun)
    assert _flag(torchrun, "--nnodes") == str(nnodes)
    assert _flag(torchrun, "--nproc_per_node") == "8"
    # the first host's address (its NodeAddr), not its name: names need not resolve elsewhere
    assert _flag(torchrun, "--rdzv_backend") == "static"  # ranks in SLURM's node order
    assert _flag(torchrun, "--rdzv_endpoint") == f"{ADDRS[0]}:29500"
    assert _flag(torchrun, "--rdzv_id") == JOB_ID
    assert _flag(torchrun, "--logs") == f"runs/egoagent_300m/logs/pretrain-{JOB_ID}"
    assert _flag(trainer, "--resume") == "auto"
    assert _flag(trainer, "--ds_config") == "configs/zero2.json"
    assert _flag(trainer, "--config") == "configs/egoagent_300m.yaml"


def test_pretrain_world_size_follows_gpus_on_node_and_overrides_pass_through(fake_bin):
    env = _env(fake_bin, 3, SLURM_GPUS_ON_NODE="4", MASTER_PORT="31000",
               CONFIG="configs/egoagent_1b.yaml")
    cmds = _dry_run("pretrain.sbatch", env, *_datasets(fake_bin), "--optim.lr=3e-4",
                    "--run.log_interval=5")
    _, torchrun, trainer = _launch(cmds)
    world = int(_flag(torchrun, "--nnodes")) * int(_flag(torchrun, "--nproc_per_node"))
    assert world == 12
    assert _flag(torchrun, "--rdzv_endpoint") == f"{ADDRS[0]}:31000"
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
    cmds = _dry_run("pretrain.sbatch", env, *_datasets(fake_bin))
    assert cmds[0] == ["rm", "-f", f"{run_dir}/PREEMPTED"]
    assert f"--run.output_dir={output_dir}" in cmds[1]
    assert "--run.name=exp1" in cmds[1]
    assert _flag(cmds[1], "--logs") == f"{run_dir}/logs/pretrain-{JOB_ID}"


def test_pretrain_command_parses_and_its_run_dir_is_the_trainers(fake_bin):
    """The printed trainer arguments go through launch/pretrain.py's own parser and config loader,
    and the PREEMPTED marker the script watches lies in the trainer's run directory."""
    from launch.pretrain import parse_args
    from megatron_ego.config import load_config
    from megatron_ego.training.run_folder import PREEMPTED, run_dir_of

    env = _env(fake_bin, OUTPUT_DIR="/lustre/runs", RUN_NAME="exp1")
    rm, launch = _dry_run("pretrain.sbatch", env, *_datasets(fake_bin), "--optim.lr=3e-4")
    _, trainer_argv = _split_at(launch, "launch/pretrain.py")
    args, overrides = parse_args(trainer_argv)
    assert (args.resume, args.ds_config, args.check) == ("auto", "configs/zero2.json", False)
    cfg = load_config(str(REPO / args.config), overrides)
    assert cfg.optim.lr == 3e-4
    assert rm == ["rm", "-f", str(Path(run_dir_of(cfg)) / PREEMPTED)]


def test_pretrain_container_flags_only_when_image_set(fake_bin):
    env = _env(fake_bin, CONTAINER_IMAGE="/shared/ego.sqsh", CONTAINER_MOUNTS="/lustre:/lustre")
    check, _, launch = _dry_run("pretrain.sbatch", env, *_datasets(fake_bin))
    srun, _ = _split_at(launch, "launch/slurm/torchrun_node.sh")
    assert _flag(srun, "--container-image") == "/shared/ego.sqsh"
    assert _flag(srun, "--container-mounts").split(",") == [f"{REPO}:{REPO}", "/lustre:/lustre"]
    assert _flag(srun, "--container-workdir") == str(REPO)
    assert _flag(srun, "--container-name") == f"egoagent-{JOB_ID}"  # reused after a requeue
    # the fail-fast check runs inside the image too (printed, not run, under DRY_RUN=1)
    assert _flag(check, "--container-image") == "/shared/ego.sqsh"
    assert check[-1] == "--check" and "launch/pretrain.py" in check


def test_pretrain_without_slurm_variables_says_to_use_sbatch(fake_bin):
    env = _env(fake_bin)
    del env["SLURM_JOB_NODELIST"]
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch")], env={**env, "DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "SLURM_JOB_NODELIST" in proc.stderr and "sbatch" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "extra_env", "message"), [
    (["--optim.lrr=3e-4"], {}, "unknown config key 'optim.lrr'"),
    # 1920 = 60 x 32, but not 64 x 32: the world size is the job's (4 nodes x 8 GPUs)
    (["--run.micro_batch_size=64"], {}, "not a multiple of run.micro_batch_size x world size = 64 x 32"),
    ([], {"CONFIG": "configs/nope.yaml"}, "configs/nope.yaml"),
    (["--data.egoexo4d_path=/nonexistent"], {}, "holds no preprocessed dataset"),
    ([], {"DS_CONFIG": "configs/nope.json"}, "--ds_config 'configs/nope.json' does not exist"),
])
def test_bad_input_stops_the_dry_run_with_one_line_before_srun(fake_bin, args, extra_env, message):
    """The trainer's own start-up checks (launch/pretrain.py --check) for the job's world size,
    before any command: exit 2, one `error:` line, nothing printed to run."""
    env = {**_env(fake_bin, 4, **extra_env), "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(SLURM_DIR / "pretrain.sbatch"), *_datasets(fake_bin), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # no srun (nor rm) printed
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


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


# ------------------------------------------------------------------------ CPUs and loader workers

def test_cpus_per_task_fits_the_trainers_worker_cap():
    """#SBATCH --cpus-per-task = 8 GPUs x (the trainer's cap of loader workers + the rank), and
    common.sh's cap is the trainer's."""
    from megatron_ego.data.loader import MAX_AUTO_WORKERS

    header = (SLURM_DIR / "pretrain.sbatch").read_text()
    gpus = int(re.search(r"^#SBATCH --gpus-per-node=(\d+)$", header, re.M).group(1))
    cpus = int(re.search(r"^#SBATCH --cpus-per-task=(\d+)$", header, re.M).group(1))
    assert cpus == gpus * (MAX_AUTO_WORKERS + 1)
    common = (SLURM_DIR / "common.sh").read_text()
    assert f"\nEGO_MAX_LOADER_WORKERS={MAX_AUTO_WORKERS}\n" in common


@pytest.mark.parametrize(("slurm_cpus", "workers"), [
    ({"SLURM_CPUS_PER_TASK": "136"}, 16),
    ({"SLURM_CPUS_PER_TASK": "256", "SLURM_CPUS_ON_NODE": "256"}, 16),  # capped, not 31
    ({"SLURM_CPUS_PER_TASK": "96", "SLURM_CPUS_ON_NODE": "224"}, 11),  # the task's CPUs count
    ({"SLURM_CPUS_ON_NODE": "96"}, 11),
    ({"SLURM_CPUS_ON_NODE": "4"}, 1),
])
def test_loader_workers_follow_the_trainers_rule(slurm_cpus, workers):
    """common.sh's sizing (8 GPUs) is data/loader.py's `auto_workers` for the same CPUs."""
    from megatron_ego.data.loader import auto_workers

    proc = subprocess.run(["bash", "-c", f"source {SLURM_DIR}/common.sh; ego_loader_workers 8"],
                          env={"PATH": "/usr/bin:/bin", **slurm_cpus}, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip() == str(workers), proc.stderr
    cpus = int(slurm_cpus.get("SLURM_CPUS_PER_TASK", slurm_cpus.get("SLURM_CPUS_ON_NODE")))
    assert auto_workers(cpus, 8) == workers


def test_the_job_sizes_its_workers_and_gives_srun_its_cpus(fake_bin):
    srun, _, trainer = _launch(_dry_run("pretrain.sbatch", _env(fake_bin, 2, SLURM_CPUS_PER_TASK="96",
                                                                 SLURM_CPUS_ON_NODE="224"),
                                        *_datasets(fake_bin)))
    assert "--data.num_workers=11" in trainer
    # srun gives the step the job's CPUs per task (SLURM < 23.11 does not pass them on itself)
    assert _flag(srun, "--cpus-per-task") == "96"


def test_loader_workers_override_and_user_argument_wins(fake_bin):
    cmd = _dry_run("pretrain.sbatch", _env(fake_bin, 2, SLURM_CPUS_ON_NODE="4"),
                   *_datasets(fake_bin), "--data.num_workers=3")[-1]
    workers = [a for a in cmd if a.startswith("--data.num_workers=")]
    assert workers == ["--data.num_workers=1", "--data.num_workers=3"]  # the user's comes last
    cmd = _dry_run("pretrain.sbatch", _env(fake_bin, 2, LOADER_WORKERS="0"), *_datasets(fake_bin))[-1]
    assert "--data.num_workers=0" in cmd
    assert "--label" in cmd  # each line of the step says which node printed it
