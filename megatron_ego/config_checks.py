"""The range rules every config section's `__post_init__` applies; each failure is a
ConfigError whose message names the key, the value and the rule."""

from __future__ import annotations

from megatron_ego.config_io import ConfigError


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok` (the message names the key, value and the rule)."""
    if not ok:
        raise ConfigError(message)


def at_least(obj: object, section: str, minimum: float, *names: str) -> None:
    """Every field in `names` of `obj` must be >= minimum."""
    for name in names:
        value = getattr(obj, name)
        check(value >= minimum, f"{section}.{name}={value} must be >= {minimum}")


def positive(obj: object, section: str, *names: str) -> None:
    """Every field in `names` of `obj` must be > 0."""
    for name in names:
        value = getattr(obj, name)
        check(value > 0, f"{section}.{name}={value} must be > 0")
