"""Every default is declared once: the YAML configs and the Python classes they name agree.

A class's settings dataclass holds its defaults; a group option's YAML file lists the same
values for the command line (`pruner.granularity=local` needs the key). Every option of every
config group is composed on top of `conf/config.yaml`, and each value the composed config gives
a class (every node with `_target_`, and the top-level keys of `RunSettings`) must equal the
class's default, unless it is an intentional choice:
- a group option that is a variant says so in `VARIANTS` (e.g. `method=sae_dense` is SAE with
  sparsity switched off), and a task pool's data (sizes, sources) has no Python default;
- an overlay (an experiment, `scale=`, a table row such as `+ablation=` or `+mechanism=`) changes
  what its own YAML sets, and what the group options it selects change.
Whichever default would win then no longer depends on the entry point (`run.py`, a test, a
script building the class). Every composed config must also pass the run's `preflight`.

The binding is one too: the top-level keys of `conf/config.yaml` are `RunSettings`' fields, and
every class a config names is its settings dataclass or derives from it without a constructor
of its own (a loader function is bound by `@configured_by`), so `_target_` plus the dataclass
is the schema.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONF_DIR, FIXTURES, compose_config
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from sae_merging.lab.spec import LabSpec
from sae_merging.runtime.preflight import RunSettings, preflight, top_level_keys
from sae_merging.utils.settings import ConfigError, settings_class

CONF = Path(CONF_DIR)
NOT_GROUPS = ("hydra", "analysis")  # Hydra's own; the landscape app's primary config
OVERLAYS = ("experiment", "scale", "ablation", "mechanism", "schedule_variant", "sparsity_range")
POOL_DATA = ("opt_size", "test_size", "stratify", "validation_size")  # what a task pool holds
# Group options that are variants of a class: the keys they set on purpose away from its defaults.
VARIANTS = {
    ("task", "lab"): {f"task.{key}" for key in POOL_DATA},
    ("task", "paper"): {f"task.{key}" for key in (*POOL_DATA, "tasks")} | {"task.tasks[1].languages"},
    ("task", "paper_local"): {f"task.{key}" for key in (*POOL_DATA, "tasks")},
    ("task", "jsonl"): {f"task.{key}" for key in (*POOL_DATA, "tasks")} | {"task.tasks[0].name"},
    ("task", "lm_eval"): {f"task.{key}" for key in (*POOL_DATA, "tasks")},
    ("model", "mergebench"): {f"model.{k}" for k in "base experts expert_names dtype vocab_policy".split()},
    ("scoring", "local"): {"scoring.granularity"},
    ("method", "sae_dense"): {"method.name", "method.sparsity_weight", "method.schedule.rate_value"},
    ("method", "task_arithmetic_fixed"): {"method.name", "method.scaling_factor"},
}  # fmt: skip
# What preflight rightly refuses in an option alone: a template waiting for the user's models or files.
NEEDS_INPUT = {
    ("model", "hf"): "model.experts needs at least 2 models, got 0",
    ("task", "jsonl"): r"task.tasks\[0\].source=None: give either source",
    ("task", "lm_eval"): r"task.tasks\[0\].task: Missing mandatory value",
}
INPUTS = {("task", "paper_local"): [f"task.data_dir={FIXTURES}"]}  # the task files, as a user gives them


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def python_defaults(cls: Any) -> dict[str, Any]:
    """The defaults a class declares: its dataclass fields', else its constructor's."""
    if dataclasses.is_dataclass(cls):
        found = {}
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                found[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                found[field.name] = field.default_factory()
        return found
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _compare(node: DictConfig, defaults: dict[str, Any], path: str) -> dict[str, tuple]:
    found = {}
    for key in node:
        if str(key).startswith("_") or key not in defaults or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):  # `???`: the user's to give (NEEDS_INPUT)
            continue
        if _plain(node[key]) != _plain(defaults[key]):
            found[f"{path}{key}"] = (_plain(node[key]), defaults[key])
    return found


def disagreements(cfg: DictConfig) -> dict[str, tuple]:
    """path -> (composed value, Python default) for every value that differs from its default."""
    found = _compare(cfg, python_defaults(RunSettings), "")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                target = node._target_
                found.update(
                    _compare(node, python_defaults(settings_class(target) or get_object(target)), path)
                )
            for key in node:
                if not (OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key)):
                    walk(node[key], f"{path}{key}.")
        elif isinstance(node, ListConfig):
            for index, item in enumerate(node):
                walk(item, f"{path.rstrip('.')}[{index}].")

    for key in cfg:
        if not OmegaConf.is_interpolation(cfg, key):
            walk(cfg[key], f"{key}.")
    return found


def _set_paths(data: Any, prefix: str = "") -> set[str]:
    """The dotted keys a YAML mapping sets (its leaves and the mappings above them)."""
    if not isinstance(data, dict):
        return set()
    paths = set()
    for key, value in data.items():
        if key in ("defaults", "hydra"):
            continue
        path = f"{prefix}{key}"
        paths |= {path} | _set_paths(value, f"{path}.")
    return paths


def intentional(group: str, option: str) -> set[str]:
    """The paths `group=option` sets on purpose: a variant's listed keys; for an overlay, what its
    YAML (and the files it includes) sets, and the variants it selects."""
    if group not in OVERLAYS:
        return set(VARIANTS.get((group, option), ()))
    data = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    paths = _set_paths(data)
    for entry in data.get("defaults", []):
        if isinstance(entry, str) and entry.startswith("/"):  # another group's file: /group/option
            other, option_of_other = entry.lstrip("/").split("@")[0].split("/")
            paths |= intentional(other, option_of_other)
        elif isinstance(entry, str) and entry != "_self_":  # a file of the same group (`_table`)
            paths |= intentional(group, entry)
        elif isinstance(entry, dict):  # override /group: option
            ((key, value),) = entry.items()
            other = key.removeprefix("override ").lstrip("/")
            if other in CONF_GROUPS:
                paths |= intentional(other, value)
    if group == "experiment":  # method/experiment/<experiment>_<method>.yaml
        for path in (CONF / "method" / "experiment").glob(f"{option}_*.yaml"):
            paths |= _set_paths(yaml.safe_load(path.read_text()) or {}, "method.")
    return paths


def _covered(path: str, allowed: set[str]) -> bool:
    """A disagreement at `path` is intentional when a chosen path is it, above it or below it."""
    return any(
        a == path or a.startswith((f"{path}.", f"{path}[")) or path.startswith(f"{a}.") for a in allowed
    )


CONF_GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_GROUPS)
OPTIONS = [
    (group, path.stem)
    for group in CONF_GROUPS
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_")
]
# conf/config.yaml's defaults list: the groups it names, and the option each gets by default
ENTRY_DEFAULTS = [
    next(iter(entry.items()))
    for entry in yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    if isinstance(entry, dict) and next(iter(entry)) in CONF_GROUPS
]
IN_DEFAULTS = {group for group, _ in ENTRY_DEFAULTS}
DEFAULT_OPTIONS = [(group, option) for group, option in ENTRY_DEFAULTS if option is not None]


def _override(group: str, option: str) -> str:
    return f"{group}={option}" if group in IN_DEFAULTS else f"+{group}={option}"


def test_every_group_and_option_is_found():
    """The option lists come from conf/ itself: a new group or option is checked without an edit."""
    assert {"method", "pruner", "experiment", "mechanism"} <= set(CONF_GROUPS)
    assert ("pruner", "magnitude") in OPTIONS and ("method", "ties") in OPTIONS
    assert dict(DEFAULT_OPTIONS)["pruner"] == "magnitude" and dict(DEFAULT_OPTIONS)["scale"] == "lab"


def test_the_entry_config_agrees_with_the_python_defaults():
    allowed = set().union(*(intentional(group, option) for group, option in DEFAULT_OPTIONS))
    found = {
        path: pair for path, pair in disagreements(compose_config([])).items() if not _covered(path, allowed)
    }
    assert not found, f"conf/config.yaml's values differ from the Python defaults: {found}"


def _option_params() -> list:
    """Every (group, option); the overlays (about 40, half a second each to compose) run in the
    slow suite, the class groups (where a Python default lives) in the fast one."""
    return [
        pytest.param(
            group, option, id=f"{group}={option}", marks=[pytest.mark.slow] if group in OVERLAYS else []
        )
        for group, option in OPTIONS
    ]


@pytest.mark.parametrize(("group", "option"), _option_params())
def test_every_option_agrees_with_the_python_defaults_and_passes_preflight(group, option):
    inputs = INPUTS.get((group, option), [])
    cfg = compose_config([_override(group, option), *inputs])
    allowed = (
        intentional(group, option)
        | {given.split("=")[0] for given in inputs}
        | set().union(*(intentional(g, o) for g, o in DEFAULT_OPTIONS if g != group))
    )
    found = {path: pair for path, pair in disagreements(cfg).items() if not _covered(path, allowed)}
    assert not found, f"{group}={option}: composed value != Python default (value, default): {found}"
    if (group, option) in NEEDS_INPUT:
        with pytest.raises(ConfigError, match=NEEDS_INPUT[group, option]):
            preflight(cfg)
    else:
        preflight(cfg)


def test_the_lab_agrees_with_its_spec():
    """`lab` has no `_target_`: its default option is LabSpec's defaults (the cache folder aside)."""
    lab = OmegaConf.to_container(compose_config([]).lab, resolve=True)
    lab.pop("cache_dir")
    assert lab == _plain(dataclasses.asdict(LabSpec()))


def test_the_run_context_declares_no_other_default():
    """RunContext carries top-level settings to the methods: a default of its own would be a
    second declaration (it once chose `last_draw` where the config says `validation`)."""
    from sae_merging.runtime.context import RunContext

    run = python_defaults(RunSettings)
    own = {key: value for key, value in python_defaults(RunContext).items() if key in run}
    assert own == {key: run[key] for key in own}


def test_the_check_sees_a_disagreement(monkeypatch):
    """The checker itself: a Python default moved away from its YAML value is found."""
    from sae_merging.pruning.settings import MagnitudePrunerSettings

    field = next(f for f in dataclasses.fields(MagnitudePrunerSettings) if f.name == "granularity")
    monkeypatch.setattr(field, "default", "local")
    assert disagreements(compose_config([]))["pruner.granularity"] == ("global", "local")


def top_level_mismatches(entry: dict, declared: list[str]) -> list[str]:
    """The top-level keys the entry config (its YAML, groups aside) and RunSettings do not
    share, one line each saying what to add where."""
    given = [key for key in entry if key not in ("defaults", "hydra")]
    found = [
        f"conf/config.yaml sets the top-level key {key!r}, which RunSettings does not declare: "
        "add it as a field of RunSettings (runtime/preflight.py), checked in __post_init__"
        for key in given
        if key not in declared
    ]
    found += [
        f"RunSettings.{key} has no line in conf/config.yaml: add `{key}: <its default>` there"
        for key in declared
        if key not in given
    ]
    return found


def test_the_top_level_keys_are_the_run_settings():
    """A top-level key is declared once, as a RunSettings field, and has its line in
    conf/config.yaml (its value there is the field's default: see the test above)."""
    entry = yaml.safe_load((CONF / "config.yaml").read_text())
    problems = top_level_mismatches(entry, top_level_keys())
    assert not problems, "\n".join(problems)


def test_a_top_level_key_missing_on_either_side_is_named():
    problems = top_level_mismatches({"defaults": [], "seed": 0, "colour": "red"}, ["seed", "device"])
    assert problems == [
        "conf/config.yaml sets the top-level key 'colour', which RunSettings does not declare: "
        "add it as a field of RunSettings (runtime/preflight.py), checked in __post_init__",
        "RunSettings.device has no line in conf/config.yaml: add `device: <its default>` there",
    ]


def test_a_top_level_default_that_disagrees_is_found(monkeypatch):
    field = next(f for f in dataclasses.fields(RunSettings) if f.name == "selection")
    monkeypatch.setattr(field, "default", "last_draw")
    assert disagreements(compose_config([]))["selection"] == ("validation", "last_draw")


def _targets(node: Any) -> list[tuple[str, bool]]:
    """(target, partial) of every `_target_` node in a YAML tree (Hydra's own section aside)."""
    if isinstance(node, list):
        return [found for item in node for found in _targets(item)]
    if not isinstance(node, dict):
        return []
    found = [(node["_target_"], bool(node.get("_partial_")))] if "_target_" in node else []
    return found + [t for key, value in node.items() if key != "hydra" for t in _targets(value)]


def _generated(cls: type) -> bool:
    """Whether a class's own `__init__` is one `@dataclass` wrote."""
    return "__dataclass_fields__" in vars(cls)


CONF_TARGETS = sorted(
    {t for path in CONF.rglob("*.yaml") for t in _targets(yaml.safe_load(path.read_text()) or {})}
)


def test_every_configured_class_is_or_derives_from_its_settings():
    """No constructor re-lists its settings' fields: every `__init__` of a configured class is
    one a dataclass generated (the checks are in `__post_init__`; the pruner's dataclass adds
    the base it is bound to at run time), and a loader's signature is its settings'. Functions
    handed over as values (`_partial_: true`: mergers, measures) take no settings."""
    assert len(CONF_TARGETS) > 20
    for target, partial in CONF_TARGETS:
        settings, bound = settings_class(target), get_object(target)
        if partial:
            assert settings is None, target
        elif inspect.isclass(bound):
            assert settings is not None and issubclass(bound, settings), f"{target}: {settings}"
            assert dataclasses.is_dataclass(settings) or not inspect.signature(settings).parameters, target
            written = [c for c in bound.__mro__[:-1] if "__init__" in vars(c) and not _generated(c)]
            assert not written, f"{target}: a constructor written by hand in {written}"
        else:
            assert settings is not None and bound.settings is settings, target
            assert inspect.signature(bound).parameters == inspect.signature(settings).parameters, target


def test_settings_are_found_from_the_class_statement_alone(tmp_path, monkeypatch):
    """A class of one's own that derives from a settings class is checked like ours, found
    without importing its module (which may import torch)."""
    (tmp_path / "my_merges.py").write_text(
        "import torch  # never imported by the lookup\n"
        "from sae_merging.methods.settings import LinearSettings\n"
        "from sae_merging.methods.one_shot import OneShotMerge\n\n\n"
        "class MyLinear(OneShotMerge, LinearSettings):\n    pass\n\n\n"
        "from sae_merging.methods.sae import SAE\n\n\n"
        "class SAE(SAE):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from sae_merging.methods.settings import LinearSettings, SAESettings

    assert settings_class("my_merges.MyLinear") is LinearSettings
    assert settings_class("my_merges.SAE") is SAESettings
    assert "my_merges" not in __import__("sys").modules
    assert settings_class("my_merges.Missing") is None and settings_class("no_such_module.X") is None


def test_only_the_keys_declared_result_neutral_leave_the_config_hash():
    """RunSettings says which top-level keys change no result; the run's config hash (which
    decides whether a run folder's checkpoint and results belong to a config) ignores those."""
    from sae_merging.runtime.preflight import keys_without_results
    from sae_merging.runtime.runner import config_hash

    assert keys_without_results() == ["progress", "tables_dir", "resume"]
    default = config_hash(compose_config([]))
    assert config_hash(compose_config(["progress=false", "resume=force", "tables_dir=elsewhere"])) == default
    assert config_hash(compose_config(["seed=1"])) != default


def test_finding_every_options_settings_imports_nothing_heavy():
    """The settings of every class the configs name are found (their modules imported) without
    torch, transformers, lm-eval or wandb: what keeps the preflight at about a second."""
    import subprocess
    import sys

    targets = [target for target, partial in CONF_TARGETS if not partial]
    script = (
        "import sys\n"
        "from sae_merging.utils.settings import settings_class\n"
        f"found = {{t: settings_class(t) for t in {targets!r}}}\n"
        "print(sorted(t for t, s in found.items() if s is None))\n"
        "print(sorted({'torch', 'transformers', 'lm_eval', 'wandb', 'datasets'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    without, heavy = done.stdout.splitlines()
    assert (without, heavy) == ("[]", "[]")
