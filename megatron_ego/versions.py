"""The versions of the heavy dependencies that megatron-ego supports, in one place.

The Dockerfile's pins (`ARG MEGATRON_CORE_VERSION=...`), requirements.txt's pins and the run-time
check all answer to `SUPPORTED` below (tests/test_docker.py proves that they agree):

    from megatron_ego.versions import check_versions
    check_versions()          # raises VersionError naming every package out of range

Ranges are PEP 440 specifiers. Pre-releases and local builds count as their release
(`2.10.0a0+b4e4ee81d3`, the torch of an NGC image, satisfies `>=2.6`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = [
    "AV_SUPPORTED",
    "DEEPSPEED_SUPPORTED",
    "MEGATRON_CORE_SUPPORTED",
    "MPI4PY_SUPPORTED",
    "SUPPORTED",
    "TORCH_SUPPORTED",
    "VersionError",
    "check_versions",
    "is_supported",
]

MEGATRON_CORE_SUPPORTED = ">=0.16.1,<0.18"
"""0.16.1 is the newest core for Python 3.10/3.11 (the CPU machines); 0.17.x needs Python >= 3.12
and is what the Dockerfile installs on the NGC image. 0.18+ is untested: widen after a GPU run."""
DEEPSPEED_SUPPORTED = ">=0.19.8,<0.20"
"""ZeRO-2 save/load verified on 0.19.8 (docs/environment.md)."""
TORCH_SUPPORTED = ">=2.6,<3"
"""2.6 is megatron-core's own floor (its wheel's Requires-Dist); 2.14.1 on the CPU machines."""
AV_SUPPORTED = ">=14,<19"
"""PyAV with bundled ffmpeg wheels; 18.x is the tested line."""
MPI4PY_SUPPORTED = ">=4.0,<5"
"""mpi4py 4.x API (preprocess/ shards takes over ranks)."""

SUPPORTED: dict[str, str] = {
    "torch": TORCH_SUPPORTED,
    "megatron-core": MEGATRON_CORE_SUPPORTED,
    "deepspeed": DEEPSPEED_SUPPORTED,
    "av": AV_SUPPORTED,
    "mpi4py": MPI4PY_SUPPORTED,
}
"""Distribution name (as pip spells it) -> PEP 440 range."""


class VersionError(RuntimeError):
    """An installed dependency is missing or outside the range megatron-ego supports."""


def is_supported(package: str, version: str) -> bool:
    """Whether `version` of `package` (a key of SUPPORTED) lies in the supported range."""
    if package not in SUPPORTED:
        raise KeyError(f"{package!r} has no supported range; known: {sorted(SUPPORTED)}")
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(SUPPORTED[package]).contains(parsed, prereleases=True)


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions(
    packages: Iterable[str] | None = None,
    installed: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Check installed versions against SUPPORTED; return {package: version} when all pass.

    packages: which keys of SUPPORTED to check (default: all).
    installed: versions to check instead of the installed ones (None = not installed); for tests.
    Raises VersionError listing every missing or out-of-range package with the pip command to fix it.
    """
    names = list(SUPPORTED) if packages is None else list(packages)
    found: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        if name not in SUPPORTED:
            raise KeyError(f"{name!r} has no supported range; known: {sorted(SUPPORTED)}")
        version = installed.get(name) if installed is not None else _installed_version(name)
        fix = f"pip install '{name}{SUPPORTED[name]}'"
        if version is None:
            problems.append(f"{name} is not installed; megatron-ego needs {SUPPORTED[name]}: {fix}")
        elif not is_supported(name, version):
            problems.append(
                f"{name} {version} is installed but megatron-ego supports {SUPPORTED[name]}: {fix} "
                "(or use the image built from the Dockerfile)"
            )
        else:
            found[name] = version
    if problems:
        raise VersionError("unsupported dependency versions:\n  " + "\n  ".join(problems))
    return found
