"""The pip requirements that the image build installs on top of its base image (stdlib only).

NGC PyTorch images since 25.03 freeze every package they ship in `/etc/pip/constraint.txt`
(`PIP_CONSTRAINT`), so an exact pin of a package the base already ships fails the build as soon
as its version differs from the base's. This script is the Dockerfile's one rule for that:

- a package that the base ships (installed in this Python, or named in `$PIP_CONSTRAINT`) is
  written bare (`tqdm`): the base's version stays, and pip has nothing to do;
- a package that the base lacks is pinned, at the version given on the command line
  (`megatron-core==0.17.1`) or else at requirements.txt's.

    python launch/docker/base_pins.py requirements.txt deepspeed "megatron-core==0.17.1" tqdm
    # stdout, one per line: deepspeed==0.19.8, megatron-core==0.17.1, tqdm (a base with tqdm)
    # stderr: one line per package: what was kept from the base, what will be installed

Exit 2 with an `error:` line for a package that has no version (not in requirements.txt, none
given) or an unreadable requirements file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 name: `PyYAML` -> `pyyaml`, `megatron_core` -> `megatron-core`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line (comments and options skipped)."""
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line.split("#", 1)[0])
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def constrained_names(text: str) -> set[str]:
    """Canonical names of a constraint file's requirement lines (`-c`/`-r` lines skipped)."""
    names = set()
    for line in text.splitlines():
        match = _NAME.match(line.split("#", 1)[0])
        if match and not line.lstrip().startswith("-"):
            names.add(canonical(match.group(1)))
    return names


def base_packages(constraint_text: str = "") -> dict[str, str]:
    """{canonical name: version or 'constrained'} of what the base ships: every distribution
    installed in this Python, plus every name its constraint file freezes."""
    shipped = {canonical(name): "constrained" for name in constrained_names(constraint_text)}
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # in sys.path order: the first is the one imported
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(canonical(name), dist.version)
    return shipped | installed


def resolve(wanted: Iterable[str], pins: Mapping[str, str], base: Mapping[str, str],
            log=print) -> list[str]:
    """The pip requirement of each wanted `name` or `name==version`: bare where the base ships it,
    pinned otherwise. Raises ValueError for a package with no version to pin."""
    out = []
    for item in wanted:
        name, _, version = item.partition("==")
        key = canonical(name)
        if key in base:
            note = f" (requirements.txt pins {pins[key]})" if key in pins else ""
            log(f"base_pins: {name} {base[key]} is the base's: kept{note}")
            out.append(name)
            continue
        version = version or pins.get(key, "")
        if not version:
            raise ValueError(f"{name} is not in the base and has no version: pin it in "
                             "requirements.txt or pass NAME==VERSION")
        log(f"base_pins: {name}=={version} is not in the base: installed")
        out.append(f"{name}=={version}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if args[:1] != ["--help"] else sys.stdout)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    try:
        pins = read_pins(Path(args[0]).read_text())
        # PIP_CONSTRAINT may name several files, separated by spaces
        constraint_text = "\n".join(Path(path).read_text()
                                    for path in os.environ.get("PIP_CONSTRAINT", "").split())
    except OSError as err:
        print(f"error: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        wanted = resolve(args[1:], pins, base_packages(constraint_text),
                         log=lambda line: print(line, file=sys.stderr))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
