"""The commands in README.md and docs/*.md work as written.

Every command of a fenced ```bash block is classified: a project entry point (Python CLI, shell
or sbatch script, make target) must exist and declare every option the docs give it (read from
its source, so this test stays fast; tests/test_cli.py runs the --help of each), or the option is
a config key (`--section.key=value`); the cheap CPU ones are also run and their documented output
checked. Commands of other tools (docker, egoexo, aws, ...)
are listed in EXTERNAL; a command of a kind this test does not know fails it, so new docs stay
checked.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ego.config import Config
from megatron_ego.config_keys import config_keys

from .slurm_fakes import _datasets

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTERNAL = {"docker", "enroot", "export", "pip", "aws", "egoexo", "stat", "UIDS=$(find"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
LAUNCHERS = {"mpirun", "torchrun", "deepspeed", ".venv/bin/deepspeed"}
CONFIG_KEYS = {f"--{key.name}" for key in config_keys(Config())}


def doc_commands() -> list[tuple[str, str]]:
    """(doc name, command) for every command of every ```bash block; a quoted argument that
    spans lines stays one command, and backslash continuations are joined."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            pending = ""
            for line in block.replace("\\\n", " ").splitlines():
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                pending = f"{pending}\n{line}" if pending else line
                try:
                    shlex.split(pending, comments=True)
                except ValueError:  # an open quote: the command goes on
                    continue
                found.append((doc.name, pending.strip()))
                pending = ""
    return found


def _tokens(command: str) -> list[str]:
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):  # VAR=value prefixes
        tokens.pop(0)
    return tokens


def _after_launcher(tokens: list[str]) -> list[str]:
    """`mpirun -n 16 python -m x ...` / `torchrun --nproc_per_node 8 x.py ...` -> from the target."""
    for i, tok in enumerate(tokens[1:], 1):
        if tok in PYTHONS or tok.endswith(".py"):
            return tokens[i:]
    raise AssertionError(f"no Python target in {tokens}")


# An sbatch script passes its extra arguments to this program.
SBATCH_TARGETS = {
    "launch/slurm/pretrain.sbatch": "launch/pretrain.py",
    "launch/slurm/evaluate.sbatch": "launch/evaluate.py",
    "launch/slurm/preprocess.sbatch": "preprocess/egoexo4d.py",
}


@functools.cache
def entry_source(path: str) -> str:
    """The source of an entry point: a script path or a `-m` module name."""
    file = ROOT / path if "/" in path else ROOT / (path.replace(".", "/") + ".py")
    assert file.is_file(), f"no entry point {path}"
    return file.read_text()


def _check_options(entry: str, args: list[str], command: str) -> None:
    """Every `--option` given is declared by the entry point (argparse string or shell case
    pattern), or is a config key (`--section.key=value`)."""
    source = entry_source(SBATCH_TARGETS.get(entry, entry))
    for arg in args:
        for option in re.findall(r"(?:^|[\s\"'=])(--[\w.-]+)", f" {arg}"):
            if "." in option:
                assert option in CONFIG_KEYS, f"{option} is not a config key: {command}"
            else:
                declared = rf"[\"']{re.escape(option)}[\"']|{re.escape(option)}[)|]"
                assert re.search(declared, source), f"{entry} has no option {option}: {command}"


def check_command(command: str) -> None:
    tokens = _tokens(command)
    program = tokens[0]
    if program in EXTERNAL or command.startswith(tuple(EXTERNAL)):
        return
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert tokens[1] in targets, f"no make target {tokens[1]}: {command}"
        return
    if program == "sbatch":
        script = next(t for t in tokens if t.endswith(".sbatch"))
        _check_options(script, tokens[tokens.index(script) + 1:], command)
        return
    if program == "bash":
        _check_options(tokens[1], tokens[2:], command)
        return
    if program in LAUNCHERS:
        tokens = _after_launcher(tokens)
        program = tokens[0]
    if program in PYTHONS:
        tokens = tokens[1:]
    elif not program.endswith(".py"):
        raise AssertionError(f"unknown kind of command (add it to EXTERNAL or teach this test): "
                             f"{command}")
    if tokens[0] == "-c":
        return  # run by test_cheap_commands_run_and_print_what_the_docs_say
    if tokens[0] == "-m":
        _check_options(tokens[1], tokens[2:], command)
    else:
        _check_options(tokens[0], tokens[1:], command)


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    docs = {doc for doc, _ in COMMANDS}
    assert {"README.md", "cluster.md"} <= docs and len(COMMANDS) > 30


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:40]}" for d, c in COMMANDS])
def test_every_documented_command_exists_and_takes_its_options(doc, command):
    check_command(command)


@pytest.mark.parametrize("bad", [
    "python launch/export.py --checkpoint runs/x --no-such-option 1",
    "sbatch launch/slurm/pretrain.sbatch --optim.no_such_key=1",
    "python -m preprocess.no_such_module --out x",
    "make no-such-target",
    "frobnicate --all",
])
def test_a_wrong_command_fails_the_check(bad):
    with pytest.raises((AssertionError, StopIteration)):
        check_command(bad)


@pytest.mark.pipeline  # imports megatron-core in subprocesses: about 20 s
def test_cheap_commands_run_and_print_what_the_docs_say(fake_bin):
    readme = (ROOT / "README.md").read_text()
    summary = subprocess.run(
        [sys.executable, "-m", "megatron_ego.model.summary", "--config",
         "configs/egoagent_300m.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0, summary.stderr
    assert '"trunk_parameters": 282637312' in summary.stdout
    assert '"trunk_parameters": 282637312' in readme

    (flops,) = [c for d, c in COMMANDS if d == "paper_facts.md" and "clip_flops" in c]
    out = subprocess.run([sys.executable, *_tokens(flops)[1:]], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    per_clip = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in
                out.stdout.splitlines()}
    assert round(per_clip["300m"][0], 2) == 3.31 and round(per_clip["300m"][1], 2) == 1.44
    assert round(per_clip["1b"][0], 2) == 12.78 and round(per_clip["1b"][1], 2) == 5.67

    (dry,) = [c for d, c in COMMANDS if d == "cluster.md" and c.startswith("DRY_RUN=1")]
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    env.update(dict(re.findall(r"([A-Z_]+)=(\S+)", dry.split("bash")[0])))
    env["SLURM_JOB_NODELIST"] = env["SLURM_JOB_NODELIST"].strip("'")
    # the script checks the datasets before it prints anything: point them at stand-ins
    proc = subprocess.run(["bash", "launch/slurm/pretrain.sbatch", *_datasets(fake_bin)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("srun --nodes=4 --ntasks=4")
