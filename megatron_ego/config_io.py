"""Strict conversion between YAML/CLI text and nested config dataclasses.

Rules: every key must be a field (unknown keys are errors naming the key and the valid ones);
values are checked against the field's type (int, float, bool, str, Literal, tuple, Optional;
floats must be finite: nan and inf are refused); malformed YAML is a one-line ConfigError;
`--section.key=value` overrides are parsed with YAML's scalar rules (`3e-4`, `true`, `[0.4, 1.0]`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import typing
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it and says what is expected."""


def read_yaml(path: str) -> dict[str, Any]:
    """Load a YAML mapping; missing, malformed and non-mapping documents are ConfigErrors."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (see configs/ for examples)")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML ({_yaml_problem(e)}): "
                              "fix the file (compare with configs/tiny_cpu.yaml)") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of sections, got {type(raw)}")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what is wrong and where (line, column; 1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def parse_overrides(overrides: typing.Iterable[str], raw: dict[str, Any]) -> dict[str, Any]:
    """Apply `--a.b=value` strings onto a nested dict (a copy); values parsed as YAML scalars."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        dotted, value_text = text.split("=", 1)
        keys = dotted.split(".")
        if len(keys) < 2 or not all(keys):
            raise ConfigError(f"override {item!r}: key must be section.key, e.g. --optim.lr=3e-4")
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"override {item!r}: {key!r} is not a section")
                node[key] = child
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(value_text) if value_text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({_yaml_problem(e)}), e.g. --data.global_crop_scale=[0.4,1.0]"
                              ) from e
    return out


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a nested dataclass missing a field is a programming error
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from e


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type `tp`; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{key}.")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_coerce(arg, v, key) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # no field has a use for nan or inf
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict of YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj
