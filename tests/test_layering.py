"""Imports only go down the layers: a module may import its own layer or lower ones, never higher.

The order (lowest first) is the architecture the package is read in:
utils < sparsity, schedules < models, tasks < evaluation < pruning < merging < lab
< runtime types (context, fitness, store, selection) < methods < runtime driver (runner, loop, ...)
< analysis. Every `import` and `from ... import` is checked, including those inside functions
(a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sae_merging"

# Module prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "utils": 0,
    "sparsity": 1,
    "schedules": 1,
    "models": 2,
    "tasks": 2,
    "evaluation": 3,
    "pruning": 4,
    "merging": 5,
    "lab": 6,  # above merging: the build's reference rows use the project's merge functions
    "runtime.context": 7,
    "runtime.fitness": 7,
    "runtime.store": 7,
    "runtime.selection": 7,  # the final-choice rules `loop.choose` applies
    "methods": 8,
    "runtime": 9,
    "analysis": 10,
}


def layer_of(module: str) -> int:
    """The layer of `sae_merging.X.Y` (the package's own `__init__` is the top)."""
    name = module.removeprefix("sae_merging").lstrip(".")
    if not name:
        return max(LAYERS.values()) + 1
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"module {module!r} has no layer: add its package to LAYERS")
    return LAYERS[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = ["sae_merging", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every sae_merging module imported by `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module_name(path)
                package = here if path.name == "__init__.py" else here.rpartition(".")[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "sae_merging" or name.startswith("sae_merging.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
    here = module_name(path)
    upward = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target} (layer {layer_of(target)} > {layer_of(here)})"
        for line, target in imported(path)
        if layer_of(target) > layer_of(here)
    ]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a lazy import of a higher layer inside a function is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from sae_merging.methods.sae import SAE\n")
    assert imported(source) == [(2, "sae_merging.methods.sae")]
    assert layer_of("sae_merging.methods.sae") > layer_of("sae_merging.models.io")
    assert layer_of("sae_merging.runtime.context") < layer_of("sae_merging.methods.sae")
    assert layer_of("sae_merging.runtime.runner") > layer_of("sae_merging.methods.sae")
