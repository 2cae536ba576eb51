"""Settings: the arguments of every configurable class, checked where they are declared.

Each class a config group names (`_target_`) declares its arguments as a dataclass deriving
from `Settings`, in a module that imports nothing heavy (no torch, transformers, lm-eval or
wandb), and checks them in `__post_init__`. The class itself derives from its settings (SAE,
the pruner), is them (the schedules, the loggers) or builds them from its arguments (the model
and task pools, the evaluators), so `SAE(...)` checks its own arguments;
`runtime/preflight.py` builds the settings alone from a composed config, so a bad config is
reported in about a second, before anything heavy is imported or loaded. A settings class
names the class it describes with `target=`, which is how the preflight finds it from a config
node's `_target_`.

A bad value raises `SettingError`: one line naming the setting, the value and what is valid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

_MISSING = object()


class InputError(ValueError):
    """A bad input (setting, file, device): reported as one line, exit status 2, no traceback."""


class ConfigError(InputError):
    """One or more invalid settings of a run; `problems` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SettingError(InputError):
    """One invalid setting: `key=value: what is valid` (the key is relative to its object)."""

    def __init__(self, key: str, value: Any = _MISSING, allowed: str = "", absolute: bool = False) -> None:
        self.key, self.value, self.allowed, self.absolute = key, value, allowed, absolute
        super().__init__(self.line())

    def line(self, prefix: str = "") -> str:
        """The message, the key prefixed by where the object sits in the config (unless the key
        is already a full path, e.g. `lab.*` read by several objects)."""
        prefix = "" if self.absolute else prefix
        key = f"{prefix}.{self.key}" if prefix and self.key else prefix or self.key
        if self.value is _MISSING:
            return f"{key}: {self.allowed}"
        return f"{key}={self.value!r}: {self.allowed}"


class Settings:
    """Base of every settings dataclass; subclasses pass `target="module.Class"`."""

    registry: ClassVar[dict[str, type[Settings]]] = {}

    def __init_subclass__(cls, target: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if target is not None:
            Settings.registry[target] = cls

    def __post_init__(self) -> None:
        pass


def bare(function: Callable | None) -> Callable | None:
    """A function as a config hands it over (Hydra's `_partial_: true` wraps it in a partial
    with no arguments): the function itself, so its identity and declared properties (a
    merger's `elementwise`) are the function's."""
    while isinstance(function, functools.partial) and not function.args and not function.keywords:
        function = function.func
    return function


# --- checks: each raises SettingError naming `key` -------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite number in [low, high] (open ends where asked); NaN and inf are always refused."""
    if value is None and optional:
        return
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    if low is not None and high is not None:
        wanted = f"a finite number in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        wanted = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        wanted = "a finite number"
    wanted = f"must be {wanted}" + (" or null" if optional else "")
    if not _is_number(value) or not math.isfinite(value):
        raise SettingError(key, value, wanted)
    if low is not None and (value < low or (low_open and value == low)):
        raise SettingError(key, value, wanted)
    if high is not None and (value > high or (high_open and value == high)):
        raise SettingError(key, value, wanted)


def rate(key: str, value: Any) -> None:
    """A sparsity or drop rate: [0, 1)."""
    number(key, value, 0, 1, high_open=True)


def integer(key: str, value: Any, low: int | None = None, high: int | None = None, *, optional=False) -> None:
    if value is None and optional:
        return
    bounds = (
        f"in {low}..{high}"
        if low is not None and high is not None
        else f">= {low}"
        if low is not None
        else ""
    )
    wanted = f"must be an integer {bounds}".rstrip() + (" or null" if optional else "")
    if not isinstance(value, int) or isinstance(value, bool):
        raise SettingError(key, value, wanted)
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingError(key, value, wanted)


def choice(key: str, value: Any, options: Iterable[Any]) -> None:
    options = tuple(options)
    if value not in options:
        raise SettingError(key, value, f"must be one of {', '.join(map(str, options))}")


def flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SettingError(key, value, "must be true or false")


def numbers(
    key: str, values: Any, low: float | None = None, *, optional: bool = False, nonempty=False
) -> None:
    """A list of finite numbers (each >= low where given)."""
    if values is None and optional:
        return
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise SettingError(key, values, "must be a list of numbers" + (" or null" if optional else ""))
    values = list(values)
    if nonempty and not values:
        raise SettingError(key, values, "must not be empty")
    for i, value in enumerate(values):
        number(f"{key}[{i}]", value, low)


def text(key: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise SettingError(key, value, "must be a non-empty string" + (" or null" if optional else ""))
