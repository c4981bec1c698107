"""The Dockerfile, requirements.txt and megatron_ego.versions agree (no Docker engine needed).

The Dockerfile keeps its pins as `ARG NAME=value` lines; these tests read them as text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from megatron_ego import versions
from megatron_ego.versions import SUPPORTED, VersionError, check_versions, is_supported

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()

# Dockerfile ARG -> the distribution it pins (torch is the base image's, recorded, not installed).
PINNED_ARGS = {
    "IMAGE_TORCH_VERSION": "torch",
    "MEGATRON_CORE_VERSION": "megatron-core",
    "DEEPSPEED_VERSION": "deepspeed",
    "AV_VERSION": "av",
    "MPI4PY_VERSION": "mpi4py",
}


def _dockerfile_args() -> dict[str, str]:
    """Every `ARG NAME=default` of the Dockerfile."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", DOCKERFILE, flags=re.MULTILINE))


def _requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt must pin exactly: {line}"
            pins[req.name.lower()] = spec.version
    return pins


def test_dockerfile_pins_every_gpu_extra_in_an_arg():
    args = _dockerfile_args()
    for arg, package in PINNED_ARGS.items():
        assert arg in args, f"Dockerfile lacks ARG {arg}= (the pin of {package})"
        Version(args[arg])  # a real version, not a range or 'latest'


@pytest.mark.parametrize(("arg", "package"), sorted(PINNED_ARGS.items()))
def test_dockerfile_pins_lie_in_the_supported_ranges(arg, package):
    version = _dockerfile_args()[arg]
    assert is_supported(package, version), (
        f"Dockerfile {arg}={version} is outside megatron_ego/versions.py's {SUPPORTED[package]}")


@pytest.mark.parametrize("package", sorted(SUPPORTED))
def test_requirements_pins_lie_in_the_supported_ranges(package):
    pins = _requirements_pins()
    assert package in pins, f"requirements.txt does not pin {package}"
    assert is_supported(package, pins[package]), (
        f"requirements.txt {package}=={pins[package]} is outside {SUPPORTED[package]}")


def test_dockerfile_installs_its_pins_and_never_torch():
    installs = [line for line in DOCKERFILE.splitlines() if "pip install" in line]
    text = "\n".join(installs)
    for arg, package in PINNED_ARGS.items():
        if package != "torch":
            assert f'"{package}==${{{arg}}}"' in text, f"no pip install of {package}==${{{arg}}}"
    assert not re.search(r"\btorch(vision)?\s*[=<>]", text), "the image's torch must stay"
    assert '"projectaria-tools==${PROJECTARIA_TOOLS_VERSION}"' in text  # preprocess/ undistortion


# Installed in the image at another version than requirements.txt's, on purpose (with the reason).
IMAGE_ONLY_VERSIONS = {"megatron-core": "0.17+ needs the image's Python 3.12; the CPU set is 3.11"}


def _dockerfile_pip_pins() -> dict[str, str]:
    """Every `name==version` the Dockerfile's pip installs, with ARG defaults substituted."""
    args = _dockerfile_args()
    text = "\n".join(_pip_install_commands())
    pins = {}
    for name, version in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', text):
        arg = re.fullmatch(r"\$\{(\w+)\}", version)
        pins[name.lower()] = args[arg.group(1)] if arg else version
    return pins


def _pip_install_commands() -> list[str]:
    """Each `pip install ...` command of the Dockerfile, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    return [part.split("pip install", 1)[1] for line in joined.splitlines()
            for part in line.split("&&") if "pip install" in part]


def test_every_package_the_image_installs_is_pinned():
    words = [w.strip('"') for cmd in _pip_install_commands() for w in cmd.split()]
    names = [w for w in words if not w.startswith(("-", "$"))]
    unpinned = [w for w in names if "==" not in w]
    assert not unpinned, f"Dockerfile installs without a pin: {unpinned}"


def test_dockerfile_pins_agree_with_requirements_and_versions():
    pins, wanted = _dockerfile_pip_pins(), _requirements_pins()
    assert {"deepspeed", "av", "numba", "pillow", "tensorboard"} <= pins.keys()
    for name, version in pins.items():
        if name in SUPPORTED:
            assert is_supported(name, version), f"Dockerfile {name}=={version} vs {SUPPORTED[name]}"
        if name in wanted and name not in IMAGE_ONLY_VERSIONS:
            assert version == wanted[name], (
                f"Dockerfile installs {name}=={version}, requirements.txt pins {wanted[name]}")


def test_image_user_owns_the_work_folder_and_the_gpu_stack_is_recorded():
    assert 'chown -R "${USER_UID}:${USER_GID}" "${MEGATRON_EGO_HOME}"' in DOCKERFILE
    record = DOCKERFILE.split("megatron-ego-image-versions.txt")[0].rsplit("RUN", 1)[1]
    for dist in ("transformer-engine", "apex", "torch"):
        assert dist in record


def test_base_image_is_a_pinned_ngc_pytorch_tag_with_python_for_the_core():
    args = _dockerfile_args()
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:\$\{NGC_PYTORCH_TAG\}$", DOCKERFILE, re.M)
    assert re.fullmatch(r"\d{2}\.\d{2}-py3", args["NGC_PYTORCH_TAG"])
    # megatron-core >= 0.17 ships for Python >= 3.12 only; 0.16.1 is the last for 3.10/3.11.
    python = Version(args["IMAGE_PYTHON_VERSION"])
    core = Version(args["MEGATRON_CORE_VERSION"])
    assert core < Version("0.17") or python >= Version("3.12")


def test_image_runs_as_a_non_root_user_and_checks_versions_at_build():
    args = _dockerfile_args()
    assert args["USER_UID"] != "0"
    users = re.findall(r"^USER\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)
    assert users and users[-1] == "${USER_UID}:${USER_GID}"
    assert "check_versions()" in DOCKERFILE


def test_no_secrets_in_the_dockerfile():
    secret = re.compile(r"(TOKEN|PASSWORD|SECRET|API_KEY|AWS_ACCESS)\w*\s*=", re.IGNORECASE)
    assert not secret.search(DOCKERFILE)


def test_dockerignore_keeps_environments_data_and_caches_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    for entry in (".venv", "runs", "data", ".git", "**/__pycache__"):
        assert entry in ignored


def test_installed_versions_here_are_supported():
    found = check_versions()
    assert set(found) == set(SUPPORTED)


def test_check_versions_names_each_problem_and_the_fix():
    installed = {name: None for name in SUPPORTED}
    installed.update(torch="2.5.1", deepspeed="0.19.8")
    with pytest.raises(VersionError) as err:
        check_versions(installed=installed)
    text = str(err.value)
    assert f"torch 2.5.1 is installed but megatron-ego supports {versions.TORCH_SUPPORTED}" in text
    assert "megatron-core is not installed" in text
    assert f"pip install 'megatron-core{versions.MEGATRON_CORE_SUPPORTED}'" in text
    assert "deepspeed" not in text  # in range: not reported
    assert check_versions(["deepspeed"], installed=installed) == {"deepspeed": "0.19.8"}


@pytest.mark.parametrize(("package", "version", "ok"), [
    ("torch", "2.10.0a0+b4e4ee81d3", True),  # NGC's pre-release + local build
    ("megatron-core", "0.16.0", False),
    ("megatron-core", "0.18.0", False),
    ("deepspeed", "not-a-version", False),
])
def test_is_supported_edges(package, version, ok):
    assert is_supported(package, version) is ok


def test_unknown_package_is_a_key_error():
    with pytest.raises(KeyError, match="no supported range"):
        check_versions(["tensorflow"])
