"""A real SLURM cluster for the tests: launch/slurm/local_cluster.sh up/down around a module,
and helpers to submit the project's sbatch scripts to it and watch their jobs.

Without SLURM (Debian's slurm-wlm and munge) the tests that need it skip with the reason;
with EGO_REQUIRE_SLURM=1 (set by .ci/run, which installs the packages) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .pretrain_runs import _free_port

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "launch" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel")
NODES = 4
"""Emulated nodes: two 2-node jobs can run at once."""


def slurm_missing() -> str | None:
    """Why the real-cluster tests cannot run here, or None."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing = [d for d in DAEMONS if shutil.which(d, path=path) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found): "
                "apt-get install slurm-wlm munge libpmix-dev")
    return None


def require_slurm() -> None:
    """Skip (or, under EGO_REQUIRE_SLURM=1, fail) when SLURM is not installed."""
    reason = slurm_missing()
    if reason is None:
        return
    if os.environ.get("EGO_REQUIRE_SLURM") == "1":
        pytest.fail(f"EGO_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Job:
    id: str
    out: Path
    """The job's --output file."""

    def info(self, cluster: Cluster) -> dict[str, str]:
        return cluster.job_info(self.id)


class Cluster:
    """A running local cluster: its folder and the environment that reaches it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))
                    and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        self.env["PATH"] = f"{self.env.get('PATH', '')}:/usr/sbin:/sbin"
        self.env["SLURM_CONF"] = str(folder / "slurm.conf")

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**self.env, **kw.pop("env", {})}, cwd=REPO,
                              capture_output=True, text=True, timeout=120, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def submit(self, script: str, options: list[str], env: dict[str, str],
               args: list[str]) -> Job:
        """sbatch launch/slurm/<script> with sbatch `options`, environment `env` and script
        `args` (the script itself unchanged); its output goes to <folder>/jobs/<id>.out."""
        jobs = self.folder / "jobs"
        jobs.mkdir(exist_ok=True)
        proc = self.run("sbatch", "--parsable", f"--output={jobs}/%j.out", *options,
                        str(SLURM_DIR / script), *args, env=env)
        job_id = proc.stdout.strip().split(";")[0]
        return Job(job_id, jobs / f"{job_id}.out")

    def job_info(self, job_id: str) -> dict[str, str]:
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout.strip()
        return dict(f.split("=", 1) for f in line.split() if "=" in f)

    def report(self, job: Job) -> str:
        """What to read when a job went wrong: the tail of its output, then what slurmctld
        logged about it (launch refusals, requeues, exit statuses appear only there)."""
        out = job.out.read_text()[-3000:] if job.out.exists() else "(no output file)"
        log = self.folder / "log" / "slurmctld.log"
        ours = [line for line in log.read_text().splitlines()
                if f"JobId={job.id} " in line + " "] if log.exists() else []
        return f"{out}\n--- slurmctld.log, JobId={job.id}:\n" + "\n".join(ours[-40:])

    def wait(self, job: Job, until, what: str, timeout: float = 300.0) -> dict[str, str]:
        """Poll the job until `until(info)`; returns that info."""
        deadline = time.monotonic() + timeout
        while True:
            info = job.info(self)
            if until(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job.id}: timed out waiting for {what}; now {info}\n"
                                     + self.report(job))
            time.sleep(1.0)

    def wait_done(self, job: Job, timeout: float = 400.0) -> dict[str, str]:
        return self.wait(job, lambda i: i["JobState"] in ("COMPLETED", "FAILED", "CANCELLED",
                                                          "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
                         "the job to end", timeout)


def start_cluster(folder: Path):
    """launch/slurm/local_cluster.sh up (NODES emulated nodes) in `folder`; yields the Cluster,
    then `down` (every daemon and leftover job process stopped by PID)."""
    require_slurm()
    env = {**os.environ, "EGO_CLUSTER_NODES": str(NODES),
           "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    script = str(SLURM_DIR / "local_cluster.sh")
    up = subprocess.run(["bash", script, "up", str(folder)], env=env, capture_output=True,
                        text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr + "".join(
            p.read_text()[-2000:] for p in (folder / "log").glob("*.log"))
        assert up.stdout.strip() == f"export SLURM_CONF={folder}/slurm.conf"
        yield Cluster(folder)
    finally:
        subprocess.run(["bash", script, "down", str(folder)], env=env, capture_output=True,
                       timeout=180)


def port() -> str:
    return str(_free_port())
