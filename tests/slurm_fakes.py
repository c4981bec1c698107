"""Shared fakes for the SLURM launch-script tests (simulated SLURM variables, fake scontrol).

DRY_RUN=1 makes each sbatch script print the commands it would run (one per line, %q-quoted), with a
fake `scontrol` first on PATH. The preemption path (SIGUSR1 -> checkpoint -> requeue) runs for real
against a fake `srun`, and torchrun_node.sh against a fake torchrun whose worker checkpoints on
SIGUSR1. The `fake_bin` fixture (a fake scontrol first on PATH) is in conftest.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "launch" / "slurm"
# Deliberately not in sorted order: the rendezvous host must be the FIRST one scontrol prints.
HOSTS = ["nodeC17", "nodeA02", "nodeB09", "nodeA01", "nodeD00", "nodeE05"]
ADDRS = ["10.1.3.17", "10.1.1.2", "10.1.2.9", "10.1.1.1", "10.1.4.0", "10.1.5.5"]
"""The hosts' NodeAddr (what the fake `scontrol show node -o HOST` prints)."""
JOB_ID = "4242"


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _env(fake_bin: Path, nnodes: int = 4, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NODELIST": "node[...]",
        "SLURM_NNODES": str(nnodes),
        "SLURM_SUBMIT_DIR": str(REPO),
    }
    env.update(extra)
    return env


def _dry_run(script: str, env: dict[str, str], *args: str) -> list[list[str]]:
    """Run an sbatch script with DRY_RUN=1; return its printed commands, each split like a shell."""
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / script), *args], env={**env, "DRY_RUN": "1"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _datasets(fake_bin: Path) -> list[str]:
    """Overrides pointing the configs' datasets at empty preprocessed folders next to `fake_bin`
    (a manifest each: what the fail-fast check looks for)."""
    args = []
    for key, name in (("egoexo4d_path", "egoexo4d"), ("walking_tours_path", "walking_tours")):
        folder = fake_bin.parent / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text("{}")
        args.append(f"--data.{key}={folder}")
    return args


def _flag(cmd: list[str], name: str) -> str:
    """Value of `name=value` or `name value` in cmd."""
    for i, arg in enumerate(cmd):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return cmd[i + 1]
    raise AssertionError(f"{name} not in {cmd}")


def _split_at(cmd: list[str], marker: str) -> tuple[list[str], list[str]]:
    i = cmd.index(marker)
    return cmd[:i], cmd[i + 1:]


