"""The Dockerfile, built for real: launch/docker/build_standin.sh builds it with buildah on a
debootstrap stand-in for the NGC base (CPU torch, the base's packages frozen in
/etc/pip/constraint.txt), then runs --print-config and 2 training steps inside the image.

Needs root, buildah and debootstrap (Debian packages), PyPI and a Debian mirror, and minutes of
downloads and compiling (docs/cluster.md, "Building the image here"): it runs only when asked,
with `make test-image` (REQUIRE_IMAGE_BUILD=1, which also turns a missing tool into a failure).
Run it after changing the Dockerfile, requirements.txt or megatron_ego/versions.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[1]


def _missing() -> list[str]:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@pytest.fixture(scope="module")
def build_log() -> str:
    if os.environ.get("REQUIRE_IMAGE_BUILD") != "1":
        pytest.skip("the image build runs with `make test-image` (REQUIRE_IMAGE_BUILD=1)")
    missing = _missing()
    if missing:
        why = f"the image build needs {', '.join(missing)} (apt-get install buildah debootstrap)"
        if os.environ.get("REQUIRE_IMAGE_BUILD") == "1":
            pytest.fail(f"REQUIRE_IMAGE_BUILD=1 but {why}")
        pytest.skip(why)
    proc = subprocess.run(["bash", "launch/docker/build_standin.sh"], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    print(proc.stdout)  # shown with `pytest -s`: the build's summary and the run inside
    assert proc.returncode == 0, f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def _requirements() -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(),
                           re.M))


def test_the_build_keeps_the_bases_versions_and_pins_only_what_it_lacks(build_log):
    kept = dict(re.findall(r"^base_pins: (\S+) (\S+) is the base's: kept", build_log, re.M))
    installed = dict(re.findall(r"^base_pins: (\S+)==(\S+) is not in the base", build_log, re.M))
    pins = _requirements()
    # the stand-in ships these at other versions than requirements.txt's: an exact pin of ours
    # would have failed the build against its constraint file
    for name in ("numpy", "tqdm", "PyYAML", "pillow", "matplotlib", "numba", "llvmlite",
                 "tensorboard"):
        assert name in kept and kept[name] != pins[name], (name, kept.get(name), pins[name])
    for name in ("deepspeed", "av", "safetensors", "scikit-image", "mpi4py"):
        assert installed[name] == pins[name]
    assert installed["megatron-core"] == pins["megatron-core"]  # the stand-in is Python 3.11
    assert "torch" not in kept and "torch" not in installed  # never even asked for


def test_the_image_passes_its_own_checks(build_log):
    check = re.search(r"^check_image: pip check adds no problem .*; (\d+) modules", build_log, re.M)
    assert check and int(check.group(1)) > 80
    versions = dict(re.findall(r"^(torch|megatron-core|deepspeed) (\S+)$", build_log, re.M))
    assert versions["torch"].endswith("+cpu") and versions["megatron-core"] == "0.16.1"
    assert versions["deepspeed"] == _requirements()["deepspeed"]


def test_print_config_inside_the_image_equals_the_checkouts(build_log):
    here = subprocess.run([sys.executable, "launch/pretrain.py", "--config",
                           "configs/tiny_cpu.yaml", "--print-config"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True).stdout
    inside = re.search(r"^print-config: (\d+) lines, sha256 (\w+)$", build_log, re.M)
    assert inside, build_log[-3000:]
    assert int(inside.group(1)) == len(here.splitlines())
    assert inside.group(2) == hashlib.sha256(here.encode()).hexdigest()


def test_two_training_steps_run_inside_the_image(build_log):
    assert re.search(r"^preprocessed: [1-9]\d* indexed datasets$", build_log, re.M)
    metrics = build_log.split("metrics.jsonl:\n", 1)[1].split("checkpoints:", 1)
    records = [json.loads(line) for line in metrics[0].splitlines() if line.startswith("{")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert "step_0000002" in metrics[1].splitlines()[0]
