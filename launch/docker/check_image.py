"""The image build's last check: `pip check`, and an import of every project module.

    python launch/docker/check_image.py --baseline /etc/megatron-ego/base-pip-check.txt \
        --no-deps-of projectaria-tools

- `pip check` must report no problem that the base image did not already have: the base's own
  report, written before anything was installed (`python -m pip check > FILE`), is the baseline,
  so a broken requirement that the image build added fails it, one that ships with the base is
  printed and tolerated. So is a missing requirement of a package installed with `--no-deps` on
  purpose (`--no-deps-of NAME`, repeatable).
- Every module of the packages `megatron_ego`, `preprocess` and `launch` must import.

Prints one summary line; exit 1 with an `error:` line per problem.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import subprocess
import sys
import traceback
from pathlib import Path

PACKAGES = ("megatron_ego", "preprocess", "launch")
CLEAN = "No broken requirements found."


def pip_check_problems() -> list[str]:
    """The lines of `python -m pip check` (none when it finds nothing)."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines()
            if line.strip() and line.strip() != CLEAN]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def new_problems(found: list[str], baseline: list[str], no_deps: tuple[str, ...] = ()) -> list[str]:
    """The problems of `found` that the baseline does not list and that are not a missing
    requirement of a package in `no_deps` (`NAME VERSION requires X, which is not installed.`)."""
    known = {line.strip() for line in baseline}
    skip = {_canonical(name) for name in no_deps}
    return [line for line in found if line.strip() not in known
            and not (_canonical(line.split()[0]) in skip and "which is not installed" in line)]


def module_names(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every module and sub-package of `packages` (the packages themselves included)."""
    names = []
    for package in packages:
        root = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.")]
    return names


def import_failures(names: list[str]) -> dict[str, str]:
    """{module: the last line of its traceback} for each module that does not import."""
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- report every module, not the first failure
            failed[name] = traceback.format_exc().strip().splitlines()[-1]
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, default=None,
                        help="the base image's own `pip check` output (default: none tolerated)")
    parser.add_argument("--no-deps-of", action="append", default=[], metavar="NAME",
                        help="a package installed with --no-deps on purpose: its missing "
                             "requirements are tolerated (repeatable)")
    args = parser.parse_args(argv)
    baseline = args.baseline.read_text().splitlines() if args.baseline else []
    found = pip_check_problems()
    added = new_problems(found, baseline, tuple(args.no_deps_of))
    for line in found:
        if line not in added:
            print(f"check_image: tolerated (the base's own, or --no-deps on purpose): {line}")
    names = module_names()
    failed = import_failures(names)
    for line in added:
        print(f"error: pip check: {line}", file=sys.stderr)
    for name, why in failed.items():
        print(f"error: import {name}: {why}", file=sys.stderr)
    if added or failed:
        return 1
    print(f"check_image: pip check adds no problem ({len(found)} tolerated); "
          f"{len(names)} modules of {', '.join(PACKAGES)} import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
