"""Settings: the arguments of every configurable class, checked where they are declared.

Each class a config names (`_target_`) has a settings dataclass deriving from `Settings`, which
declares its arguments and their defaults and checks them in `__post_init__`. The class either
is its settings (the schedules, the loggers) or derives from them without re-listing a field
(SAE, the pools, the evaluators: `class ModelPool(ModelPoolBase, ModelPoolSettings)`); a
loader function is bound to its settings by `@configured_by(Gsm8kSettings)`. So `_target_`
plus the dataclass is the schema, and `ModelPool(...)` checks its own arguments.

Settings live in *settings modules*: a module that defines a class deriving from `Settings`
itself, and imports nothing heavy (no torch, transformers, lm-eval or wandb). `settings_class`
finds a `_target_`'s settings by reading the target's class statement (or decorator) from
its source, without importing the target's module; `runtime/preflight.py` builds the settings
alone from a composed config, so a bad config is reported in about a second, before anything
heavy is imported or loaded. Nothing is registered by name: a new class is found from its
own statement.

A bad value raises `SettingError`: one line naming the setting, the value and what is valid.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

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
    """Base of every settings dataclass (see the module docstring)."""

    def __post_init__(self) -> None:
        pass

    def problems(self, *context: Any) -> list[str]:
        """What is wrong with what these valid settings name (files, models), checked before any
        weights load; `context`: what the check needs (a method: the model pool; a task: its
        config key). Nothing by default."""
        return []

    def warnings(self, *context: Any) -> list[str]:
        """Legal but costly choices, said before the run starts. Nothing by default."""
        return []


S = TypeVar("S", bound=Settings)
R = TypeVar("R")


def configured_by(settings: type[S]) -> Callable[[Callable[[S], R]], Callable[..., R]]:
    """Binds a loader function `f(settings) -> R` to its settings class: the function is
    called with the settings' arguments (as a config's `_target_` calls it), builds them (which
    checks them) and hands them over. Its signature is the settings'."""

    def bind(function: Callable[[S], R]) -> Callable[..., R]:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> R:
            return function(settings(*args, **kwargs))

        call.__signature__ = inspect.signature(settings).replace(
            return_annotation=inspect.signature(function).return_annotation
        )
        call.settings = settings
        return call

    return bind


# --- a `_target_`'s settings, read from its source --------------------------------------------

_ROOT = (__name__, "Settings")
_BINDER = (__name__, "configured_by")


@functools.cache
def _module_source(module: str) -> tuple[dict[str, ast.AST], dict[str, tuple[str, str]]] | None:
    """A module's top-level classes and functions, and what each imported name refers to
    ({name: (module, name)}); None when it has no Python source. Imports its parent packages
    only (`find_spec`), never the module itself."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as file:
        tree = ast.parse(file.read(), spec.origin)
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    definitions, imports = {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            definitions[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                imports[alias.asname or alias.name] = (source, alias.name)
    return definitions, imports


def _is_settings_module(module: str) -> bool:
    """Whether a module defines a class deriving from `Settings` itself (then it holds settings
    and imports nothing heavy)."""
    found = _module_source(module)
    return found is not None and any(
        isinstance(node, ast.ClassDef) and _ROOT in (_where(module, base) for base in node.bases)
        for node in found[0].values()
    )


def _where(module: str, expression: ast.expr) -> tuple[str, str] | None:
    """(module, name) of a class named in `module` by a plain or imported name."""
    if not isinstance(expression, ast.Name):
        return None
    found = _module_source(module)
    if found is None:
        return None
    definitions, imports = found
    if expression.id in definitions:
        return module, expression.id
    return imports.get(expression.id)


@functools.cache
def _settings_of(module: str, name: str) -> tuple[str, str] | None:
    """(module, name) of the settings class of `module.name` (see `settings_class`)."""
    if (module, name) == _ROOT:
        return _ROOT
    found = _module_source(module)
    if found is None:
        return None
    definitions, imports = found
    node = definitions.get(name)
    if node is None:  # re-exported from another module
        return _settings_of(*imports[name]) if name in imports else None
    if isinstance(node, ast.FunctionDef):
        bindings = [
            d for d in node.decorator_list if isinstance(d, ast.Call) and _where(module, d.func) == _BINDER
        ]
        where = _where(module, bindings[0].args[0]) if bindings and bindings[0].args else None
        return _settings_of(*where) if where else None
    # a class named like the base it imports (`class SAE(SAE)`) derives from the import
    bases = [
        imports.get(base.id) if (where := _where(module, base)) == (module, name) else where
        for base in node.bases
    ]
    of_bases = [settings for base in bases if base and (settings := _settings_of(*base))]
    if not of_bases:
        return None
    if _ROOT in of_bases or _is_settings_module(module):
        return module, name
    classes = {where: getattr(importlib.import_module(where[0]), where[1]) for where in of_bases}
    derived = [where for where, cls in classes.items() if all(issubclass(cls, c) for c in classes.values())]
    if not derived:
        raise TypeError(f"{module}.{name} derives from unrelated settings classes: {sorted(classes)}")
    return derived[0]


def settings_class(target: str) -> type[Settings] | None:
    """The settings class of a config's `_target_` ("module.Name"), or None when it has none
    (a function, a class of one's own that declares no settings). Read from the target's own
    statement, without importing its module: a class in a settings module is its own settings
    (`class CyclicSchedule(Settings)`); any other class's are the most derived settings among
    its bases (`class Linear(OneShotMerge, LinearSettings)`: `LinearSettings`); a function's,
    those of its `@configured_by(...)`. Only the settings' module is imported."""
    module, _, name = target.rpartition(".")
    found = _settings_of(module, name) if module else None
    if found is None or found == _ROOT:
        return None
    return getattr(importlib.import_module(found[0]), found[1])


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
