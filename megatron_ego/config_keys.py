"""Every config key with its type, value and the documentation written under its field in
`megatron_ego/config.py` and `megatron_ego/config_training.py` (read from the source, so the
listing and the code cannot drift).

    for key in config_keys(load_config("configs/tiny_cpu.yaml")):
        print(key.name, key.type, key.value, key.doc)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

from megatron_ego import config as config_module
from megatron_ego import config_training


@dataclass(frozen=True)
class ConfigKey:
    name: str  # "model.num_layers"
    type: str  # "int"
    value: Any
    doc: str


@cache
def _field_docs() -> dict[tuple[str, str], str]:
    """{(class name, field name): the string literal written right under the field}."""
    docs = {}
    classes = [n for module in (config_module, config_training)
               for n in ast.parse(inspect.getsource(module)).body if isinstance(n, ast.ClassDef)]
    for cls in classes:
        body = cls.body
        for field_node, after in zip(body, body[1:]):
            if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[(cls.name, field_node.target.id)] = " ".join(after.value.value.split())
    return docs


def config_keys(cfg: config_module.Config) -> list[ConfigKey]:
    """One entry per leaf field, in declaration order (section by section)."""
    keys = []
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            keys.append(ConfigKey(
                name=f"{section.name}.{f.name}",
                type=str(f.type),
                value=getattr(part, f.name),
                doc=_field_docs().get((type(part).__name__, f.name), ""),
            ))
    return keys


def format_keys(cfg: config_module.Config) -> str:
    """The listing `launch/pretrain.py --list-keys` prints: key, type, value, then the doc."""
    lines = []
    for key in config_keys(cfg):
        value = "''" if key.value == "" else key.value
        lines.append(f"--{key.name}={value}  ({key.type})")
        if key.doc:
            lines.append(f"    {key.doc}")
    return "\n".join(lines)
