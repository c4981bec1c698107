"""The project's sbatch scripts, unchanged, on a real SLURM cluster (launch/slurm/local_cluster.sh:
slurmctld and emulated nodes with a file-backed `gpu` GRES; ranks on CPU with gloo). Only
environment variables and sbatch options differ from a GPU cluster's submission.

Skipped with the reason where SLURM is not installed; under EGO_REQUIRE_SLURM=1 (CI) they fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from megatron_ego.training.checkpoint import find_resume_checkpoint

from .pretrain_runs import _weights
from .slurm_cluster import REPO, SLURM_DIR, Cluster, Job, port

pytestmark = [pytest.mark.multiprocess, pytest.mark.pipeline]

STEPS = 8
# 2 nodes x 1 rank x micro-batch 2: a tiny model (tests/pretrain_runs.py's) on the demo world.
TINY = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
        "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32", "--model.head_out_dim=128",
        "--data.num_local_crops=2", "--data.num_workers=0", "--data.walking_tours_ratio=0",
        "--run.micro_batch_size=2", "--run.global_batch_size=4", "--schedule.warmup_iters=1",
        "--run.log_interval=1", f"--schedule.train_iters={STEPS}"]
# Two emulated nodes, one "GPU" each; the nodes have the machine's CPUs (the script asks 136).
NODES_2 = ["--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1", "--time=20"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """The demo's raw world: 2 takes, k-NN image folders."""
    root = tmp_path_factory.mktemp("raw") / "raw"
    subprocess.run([sys.executable, "-m", "preprocess.demo_world", "--out", str(root), "--takes",
                    "2", "--seconds", "3", "--resolution", "64", "--walking-tours", "0",
                    "--knn-train", "1", "--knn-val", "1"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    return root


@pytest.fixture(scope="module")
def preprocessed(cluster: Cluster, raw: Path, tmp_path_factory) -> dict:
    """preprocess.sbatch over 2 tasks on 2 nodes (srun --mpi=pmix), and the same preprocessing
    in one process (run meanwhile)."""
    root = tmp_path_factory.mktemp("data")
    args = ["--undistort", "off", "--takes-per-shard", "1", "--size", "64"]
    job = cluster.submit("preprocess.sbatch", ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                                               "--time=10"],
                         {"RAW_DIR": str(raw), "OUT_DIR": str(root / "two_tasks")}, args)
    single = subprocess.run([sys.executable, "-m", "preprocess.egoexo4d", "--root", str(raw),
                             "--out", str(root / "one_process"), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    info = cluster.wait_done(job)
    return {"job": job, "info": info, "two": root / "two_tasks", "one": root / "one_process"}


def _pretrain(cluster: Cluster, data: Path, runs: Path, name: str, *extra: str) -> Job:
    env = {"CONFIG": "configs/tiny_cpu.yaml", "OUTPUT_DIR": str(runs), "RUN_NAME": name,
           "MASTER_PORT": port()}
    return cluster.submit("pretrain.sbatch", NODES_2, env,
                          [*TINY, f"--data.egoexo4d_path={data}", *extra])


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_a_step(cluster: Cluster, job: Job, run_dir: Path, timeout: float = 300.0) -> None:
    """Until `job` has logged a step: metrics.jsonl read every 0.1 s (the job's state, by
    scontrol, every 2 s), so that the signal that follows lands with most of the run still to
    go: on a quiet machine the tiny run's 8 steps take a few seconds, less than polling
    scontrol once a second then signalling took for the last 6 of them."""
    deadline = last_check = time.monotonic()
    deadline += timeout
    while not _steps(run_dir):
        now = time.monotonic()
        if now - last_check > 2.0:
            last_check = now
            info = job.info(cluster)
            assert info["JobState"] in ("PENDING", "CONFIGURING", "RUNNING"), info
        assert now < deadline, f"job {job.id}: no step logged in {timeout:.0f} s"
        time.sleep(0.1)


def _preempt(cluster: Cluster, job: Job, run_dir: Path) -> dict:
    """While `job` runs: after its first step, SIGUSR1 to its batch shell (what
    --signal=B:USR1@120 sends before the time limit); once requeued, release it from its begin
    time and wait for its end. Returns the step it stopped at and the final job info."""
    _wait_for_a_step(cluster, job, run_dir)
    cluster.run("scancel", "--signal=USR1", "--batch", job.id)
    cluster.wait(job, lambda i: i["JobState"] == "PENDING" and i["Restarts"] == "1",
                 "the requeue", timeout=200)
    stopped_at = max(_steps(run_dir))
    complete = (run_dir / "checkpoints" / f"step_{stopped_at:07d}" / "COMPLETE").exists()
    _release_after_the_revocation(cluster, job)
    return {"stopped_at": stopped_at, "checkpointed": complete, "info": cluster.wait_done(job)}


def _release_after_the_revocation(cluster: Cluster, job: Job) -> None:
    """Start a requeued job now instead of after SLURM's requeue delay. The requeue revoked the
    first run's job credential, to the second; a credential signed within the same second counts
    as revoked too, and the nodes then refuse the launch ("Killing non-startable batch JobId=N:
    Job credential revoked", the job FAILED without running: CI, 2026-12-06, released 80 ms after
    the requeue). The delay SLURM puts on a requeued job is there for this; the test waits for
    the next whole second but one."""
    time.sleep(2.0 - time.time() % 1.0)
    cluster.run("scontrol", "update", f"JobId={job.id}", "StartTime=now")


def _cancel_and_resubmit(cluster: Cluster, job: Job, run_dir: Path, resubmit) -> dict:
    """While `job` runs: after its first step, scancel it; then submit the same run again."""
    _wait_for_a_step(cluster, job, run_dir)
    cluster.run("scancel", job.id)
    cancelled = cluster.wait_done(job)
    newest, _ = find_resume_checkpoint(str(run_dir))
    again = resubmit()
    return {"cancelled": cancelled, "newest": newest, "again": again,
            "info": cluster.wait_done(again)}


@pytest.fixture(scope="module")
def runs(cluster: Cluster, preprocessed: dict, tmp_path_factory):
    """Every training job at once (4 nodes, 2 per job): the uninterrupted reference run, a run
    preempted through the scheduler, a run cancelled and submitted again. Background threads
    signal the jobs at the right moments; the tests read the results."""
    folder = tmp_path_factory.mktemp("runs")
    data = preprocessed["two"]

    def submit(name: str, *extra: str) -> Job:
        return _pretrain(cluster, data, folder, name, *extra)

    # A checkpoint every step slows a run down (not its arithmetic): the signals arrive before
    # its last step.
    reference = submit("reference", "--run.save_interval=100")
    preempted = submit("preempted", "--run.save_interval=1")
    cancelled = submit("cancelled", "--run.save_interval=1")
    with ThreadPoolExecutor(2) as pool:
        yield {"folder": folder, "data": data, "reference": reference, "preempted": preempted,
               "preemption": pool.submit(_preempt, cluster, preempted, folder / "preempted"),
               "cancellation": pool.submit(
                   _cancel_and_resubmit, cluster, cancelled, folder / "cancelled",
                   lambda: submit("cancelled", "--run.save_interval=1"))}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return _weights(run_dir / "checkpoints" / f"step_{STEPS:07d}")


def _assert_same_weights(run_dir: Path, reference: Path) -> None:
    """Student and EMA teacher of the final checkpoints, bit for bit."""
    got, want = _final_weights(run_dir), _final_weights(reference)
    assert got.keys() == want.keys() and len(got) > 10
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- preprocess.sbatch

def test_preprocess_on_two_tasks_equals_one_process(cluster, preprocessed):
    out = preprocessed["job"].out.read_text()
    assert preprocessed["info"]["JobState"] == "COMPLETED", cluster.report(preprocessed["job"])
    assert "[rank 1/2] INFO wrote shard" in out and "[rank 0/2] INFO wrote shard" in out
    two, one = preprocessed["two"], preprocessed["one"]
    names = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == names
    assert {"frames.bin", "clips.idx", "manifest.json"} <= set(names)
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


# ------------------------------------------------------------------------------ pretrain.sbatch

def test_pretrain_two_nodes_one_rank_each(cluster, runs):
    job: Job = runs["reference"]
    info = cluster.wait_done(job)
    out = job.out.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), cluster.report(job)
    run_dir = runs["folder"] / "reference"
    # the run folder is complete
    assert _steps(run_dir) == list(range(1, STEPS + 1))
    final = run_dir / "checkpoints" / f"step_{STEPS:07d}"
    manifest = json.loads((final / "COMPLETE").read_text())
    assert manifest["world_size"] == 2
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "tensorboard", "logs"} <= {
        p.name for p in run_dir.iterdir()}
    # both ranks trained: each wrote its ZeRO-2 optimizer partition and its own log
    for rank in (0, 1):
        assert (final / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").stat().st_size > 0
    logs = run_dir / "logs" / f"pretrain-{job.id}"
    rank_logs = {p.parts[-5]: p for p in logs.glob("node*/*/attempt_0/0/stderr.log")}
    assert set(rank_logs) == {"node0", "node1"}  # node N's local rank 0 = global rank N
    # rank 0's lines reach the console once (not once per rank); every line of the job is clean
    assert out.count(f"step {STEPS:>7d} |") == 1
    assert "rendezvous 127.0.0.1:" in out  # the first node's NodeAddr, not its name "n1"
    everything = out + "".join(p.read_text() for p in logs.rglob("*.log"))
    assert "Unknown MLP type" not in everything
    assert "Traceback" not in everything


def test_preemption_through_the_scheduler_requeues_and_resumes_exactly(cluster, runs):
    """SIGUSR1 to the batch shell: the trainer checkpoints, the job requeues itself, resumes, and
    ends with the weights of the uninterrupted run."""
    result = runs["preemption"].result(timeout=900)
    job: Job = runs["preempted"]
    run_dir = runs["folder"] / "preempted"
    out = job.out.read_text()
    assert result["stopped_at"] < STEPS and result["checkpointed"], cluster.report(job)
    assert (result["info"]["JobState"], result["info"]["Restarts"]) == ("COMPLETED", "1"), \
        cluster.report(job)
    assert "requeueing job" in out
    stopped_at = result["stopped_at"]
    assert f"resumed from {run_dir}/checkpoints/step_{stopped_at:07d} at step {stopped_at}" in out
    assert _steps(run_dir) == list(range(1, STEPS + 1))  # every step once
    cluster.wait_done(runs["reference"])
    _assert_same_weights(run_dir, runs["folder"] / "reference")


def test_scancel_then_submit_again_resumes_from_the_newest_complete_checkpoint(cluster, runs):
    result = runs["cancellation"].result(timeout=900)
    run_dir = runs["folder"] / "cancelled"
    assert result["cancelled"]["JobState"] == "CANCELLED"
    newest = result["newest"]
    assert newest is not None and 1 <= int(newest.name.removeprefix("step_")) < STEPS
    out = result["again"].out.read_text()
    assert result["info"]["JobState"] == "COMPLETED", cluster.report(result["again"])
    assert f"resumed from {newest} at step {int(newest.name.removeprefix('step_'))}" in out
    assert _steps(run_dir) == list(range(1, STEPS + 1))
    cluster.wait_done(runs["reference"])
    _assert_same_weights(run_dir, runs["folder"] / "reference")


# ------------------------------------------------------------------------------ evaluate.sbatch

def test_evaluate_an_export_with_knn(cluster, runs, raw, tmp_path):
    from launch import export

    cluster.wait_done(runs["reference"])
    model = tmp_path / "export"
    assert export.main(["--checkpoint", str(runs["folder"] / "reference"), "--out", str(model)]) == 0
    env = {"MODEL_DIR": str(model), "EVAL_DIR": str(tmp_path / "eval"),
           "KNN_TRAIN": str(raw / "imagefolder" / "train"), "KNN_VAL": str(raw / "imagefolder" / "val")}
    job = cluster.submit("evaluate.sbatch", ["--gpus-per-node=1", "--cpus-per-task=1", "--time=10"],
                         env, ["--workers", "0", "--batch-size", "16", "--figures", "0"])
    info = cluster.wait_done(job)
    assert info["JobState"] == "COMPLETED", cluster.report(job)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    knn = results["knn"]
    assert knn and all(0.0 <= v <= 100.0 for m in knn.values() for k, v in m.items()
                       if k.startswith("top"))


# -------------------------------------------------------------------------- fail fast, for real

def test_bad_override_stops_the_job_with_one_line_before_srun(cluster, runs, tmp_path):
    job = _pretrain(cluster, runs["data"], tmp_path, "bad", "--optim.lrr=3e-4")
    info = cluster.wait_done(job, timeout=120)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    lines = job.out.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'optim.lrr'"), lines
    assert not (tmp_path / "bad").exists()  # no step started, no run folder
    # DRY_RUN=1 stops on the same line
    env = {"DRY_RUN": "1", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2",
           "SLURM_GPUS_ON_NODE": "1", "CONFIG": "configs/tiny_cpu.yaml"}
    dry = cluster.run("bash", str(SLURM_DIR / "pretrain.sbatch"), *TINY,
                      f"--data.egoexo4d_path={runs['data']}", "--optim.lrr=3e-4", check=False,
                      env=env)
    assert (dry.returncode, dry.stdout, dry.stderr.strip()) == (2, "", lines[0])
