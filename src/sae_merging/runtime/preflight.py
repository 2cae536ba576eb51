"""Every input of a run checked before any heavy work, in about a second.

The config's light objects are built first: the top-level keys are `RunSettings` (the one
place they are declared); every other top-level key is a config group's node (`conf/<group>/`).
For each node with a `_target_`, the target's settings class is built (`settings_class` in
`sae_merging.utils.settings` reads it from the target's class statement; the modules that hold
settings import no torch, transformers, lm-eval or wandb). Each settings class checks its own
arguments; a key it does not take is an error, not a silent skip. Then the checks that span objects (an
archive that cannot hold generation 0, a method that needs a base), then the files (model
folders and their headers, the tokenizer, local data files) and the run folder. Everything
found is reported at once, one line each; `run.py` exits with status 2.

A `_target_` with no settings (a function, a class of your own that does not derive from a
settings class) is only checked to name an importable module here; its constructor checks the
rest when the run builds it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sae_merging.runtime.checkpoint import RESUME_MODES
from sae_merging.runtime.outputs import METRICS_FILE, RESULTS_FILE, TEST_ITEMS_FILE
from sae_merging.tasks.settings import SELECTIONS
from sae_merging.utils import paths
from sae_merging.utils import settings as check
from sae_merging.utils.files import folder_problem
from sae_merging.utils.settings import ConfigError, SettingError, Settings, settings_class
from sae_merging.utils.threads import AUTO

__all__ = ["ConfigError", "Plan", "RunSettings", "preflight", "build"]

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
_REFERENCE = re.compile(r"^\$\{([\w.]+)\}$")


RESULT_NEUTRAL = {"changes_results": False}  # a RunSettings field's metadata: see RunSettings


@dataclass(eq=False)
class RunSettings(Settings):
    """The top-level keys of `conf/config.yaml` (the config groups aside): the one place they
    and their defaults are declared (tests/test_defaults.py holds the YAML to them). A new key:
    a field here, checked in `__post_init__`, and its line in `conf/config.yaml`; a key that
    changes no result (where outputs go, how to resume) says so with `metadata=RESULT_NEUTRAL`, and
    is then left out of the run's config hash (`runner.results_config`)."""

    seed: int = 0
    device: str = "auto"
    progress: bool = field(default=True, metadata=RESULT_NEUTRAL)
    threads: int | str | None = AUTO
    final_evaluator: Any = None
    budget: Mapping[str, Any] = field(default_factory=lambda: {"examples": None})
    selection: str = "validation"
    # where the table experiments' sweeps go (scale=paper: its own)
    tables_dir: str = field(default="outputs/tables", metadata=RESULT_NEUTRAL)
    resume: bool | str = field(default=True, metadata=RESULT_NEUTRAL)  # runtime.checkpoint.RESUME_MODES

    def __post_init__(self) -> None:
        check.integer("seed", self.seed, 0)
        if not isinstance(self.device, str) or DEVICE_PATTERN.fullmatch(self.device) is None:
            raise SettingError("device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        check.flag("progress", self.progress)
        if self.threads != "auto":
            check.integer("threads", self.threads, 1, optional=True)
        self.budget = dict(self.budget or {})
        for key in self.budget:
            if key != "examples":
                raise SettingError(f"budget.{key}", self.budget[key], "unknown setting; valid: examples")
        check.integer("budget.examples", self.budget.get("examples"), 1, optional=True)
        check.choice("selection", self.selection, SELECTIONS)
        check.text("tables_dir", self.tables_dir)
        if self.resume not in RESUME_MODES or self.resume in (0, 1) and not isinstance(self.resume, bool):
            raise SettingError("resume", self.resume, "must be true, false, force or previous")


@dataclass
class Plan:
    """The checked light objects of a run, and what is legal but worth a warning."""

    run: RunSettings
    objects: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _Unchecked(Settings):
    """Stands for an object whose class has no settings: nothing of it is checked."""

    def __init__(self, target: str) -> None:
        self.target = target


def top_level_keys() -> list[str]:
    """The top-level settings (RunSettings' fields), in their order."""
    return [f.name for f in dataclasses.fields(RunSettings)]


def keys_without_results() -> list[str]:
    """The top-level settings that change no result (`metadata=RESULT_NEUTRAL`)."""
    return [f.name for f in dataclasses.fields(RunSettings) if f.metadata.get("changes_results") is False]


class _Builder:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def problem(self, line: str) -> None:
        if line not in self.problems:
            self.problems.append(line)

    def value(self, parent: DictConfig | ListConfig, index: Any, key: str) -> tuple[Any, bool]:
        """A child's value, built where it is an object node; (value, ok)."""
        if isinstance(parent, DictConfig) and OmegaConf.is_interpolation(parent, index):
            reference = _REFERENCE.match(str(parent._get_node(index)._value()))
            if reference:
                key = reference.group(1)  # `${schedule}`: problems are reported as schedule.*
        try:
            child = parent[index]
        except OmegaConfBaseException as error:
            self.problem(f"{key}: {str(error).splitlines()[0]}")
            return None, False
        if isinstance(child, DictConfig) and "_target_" in child:
            built = self.node(child, key)  # its problems are recorded; the parent is still checked
            return (_Unchecked(str(child["_target_"])) if built is None else built), True
        if isinstance(child, ListConfig):
            items = [self.value(child, i, f"{key}[{i}]") for i in range(len(child))]
            return [v for v, _ in items], all(ok for _, ok in items)
        if isinstance(child, DictConfig):
            items = {k: self.value(child, k, f"{key}.{k}") for k in child.keys()}
            return {k: v for k, (v, _) in items.items()}, all(ok for _, ok in items.values())
        if isinstance(child, float) and not math.isfinite(child):
            self.problem(f"{key}={child!r}: must be a finite number (NaN and inf are refused everywhere)")
            return child, False
        return child, True

    def node(self, node: DictConfig, key: str) -> Any:
        """The settings object of a `_target_` node (None when it has problems)."""
        target = str(node["_target_"])
        cls = settings_class(target)
        names = [k for k in node.keys() if not str(k).startswith("_")]
        if cls is None:
            self.without_settings(target, key)
            values = [self.value(node, k, f"{key}.{k}") for k in names]
            return _Unchecked(target) if all(ok for _, ok in values) else None
        parameters = inspect.signature(cls).parameters
        accepted = [p for p in parameters if p != "self"]
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs, ok = {}, True
        for name in names:
            if name not in parameters and not open_ended:
                self.problem(f"{key}.{name}: unknown setting for {target}; valid: {', '.join(accepted)}")
                ok = False
                continue
            kwargs[name], good = self.value(node, name, f"{key}.{name}")
            ok = ok and good
        if not ok:
            return None
        if node.get("_partial_", False):
            return _Unchecked(target)
        try:
            return cls(**kwargs)
        except SettingError as error:
            self.problem(error.line(key))
        except TypeError as error:  # a required setting left out
            self.problem(f"{key}: {error}".replace(f"{cls.__name__}.__init__() ", ""))
        return None

    def without_settings(self, target: str, key: str) -> None:
        """A target with no settings must at least name a module that can be found."""
        module = target.rpartition(".")[0]
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            self.problem(f"{key}._target_={target!r}: no module {module!r} to import it from")


def build(cfg: DictConfig) -> tuple[dict[str, Any], RunSettings | None, list[str]]:
    """The light objects of a composed run config: ({group: object}, run settings, problems).
    A top-level key is a `RunSettings` field or a config group's node (a mapping)."""
    builder = _Builder(cfg)
    objects: dict[str, Any] = {}
    top = {}
    for key in cfg.keys():
        if key in top_level_keys():
            value, ok = builder.value(cfg, key, key)
            if ok:
                top[key] = value
        elif not (isinstance(cfg._get_node(key), DictConfig) or OmegaConf.is_interpolation(cfg, key)):
            valid = ", ".join(top_level_keys())
            builder.problem(f"{key}: unknown setting; valid top-level keys: {valid} (and the config groups)")
        elif isinstance(cfg._get_node(key), DictConfig) and "_target_" in cfg[key]:
            objects[key] = builder.node(cfg[key], key)
        else:
            builder.value(cfg, key, key)
    run = None
    try:
        run = RunSettings(**top)
    except SettingError as error:
        builder.problem(error.line())
    return objects, run, builder.problems


# what a run writes into its folder (runner.py); anything else there is someone else's
RUN_ENTRIES = (
    ".hydra",
    ".lock",
    "checkpoint",
    METRICS_FILE,
    RESULTS_FILE,
    TEST_ITEMS_FILE,
    "model",
    "wandb",
)


def run_inputs(objects: Mapping[str, Any]) -> dict[str, str]:
    """The local model folders and data a run reads, by their setting (lab: its cache)."""
    found = {}
    models, tasks = objects.get("model"), objects.get("task")
    if isinstance(getattr(models, "base", None), str):
        found["model.base"] = models.base
    for index, expert in enumerate(getattr(models, "experts", None) or []):
        if isinstance(expert, str):
            found[f"model.experts[{index}]"] = expert
    for name, pool in (("model", models), ("task", tasks)):
        if isinstance(getattr(pool, "cache_dir", None), str):
            found[f"{name}.lab.cache_dir"] = pool.cache_dir
    if isinstance(getattr(tasks, "data_dir", None), str):
        found["task.data_dir"] = tasks.data_dir
    return found


def run_folder_problems(folder: Path, inputs: Mapping[str, str], key: str = "hydra.run.dir") -> list[str]:
    """The run folder must not be, hold or lie inside an input, nor hold files that are not a
    run's (a run replaces its own, e.g. `model/`)."""
    found = paths.overlap_problems(folder, inputs, key)
    foreign = [name for name in paths.entries(folder) if name not in RUN_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        found.append(
            f"{key}={str(folder)!r}: holds files that are not a run's ({shown}); "
            "choose an empty or new folder"
        )
    return found


def task_choice_problem(cfg: DictConfig, overrides: Sequence[str]) -> str | None:
    """Models of one's own are never scored on the lab's toy tasks by default: with a model pool
    other than the lab's, the lab's task pool must be named on the command line."""
    model, task = (str(OmegaConf.select(cfg, f"{key}._target_", default="")) for key in ("model", "task"))
    named = any(o.lstrip("+~").split("=", 1)[0] == "task" for o in overrides)
    if named or model.endswith(".LabModelPool") or not task.endswith(".LabTaskPool"):
        return None
    return (
        "model=hf needs a task on the command line: task=paper_local (local GSM8K and MMLU-ProX "
        "files under task.data_dir), task=paper (the hub), or task=lab (the lab's toy tasks)"
    )


def _steps_under_a_budget(run, method, overrides: Sequence[str]) -> list[str]:
    """A search's step count given on the command line beside a budget (SAE's
    `schedule.steps`, PSO's and M2N2's `method.steps`): the search runs until the budget is
    spent, so say so. A grid's or an expert's steps are not settings: nothing to say."""
    examples = run.budget.get("examples") if run is not None else None
    names = {f.name for f in dataclasses.fields(method)} if dataclasses.is_dataclass(method) else set()
    keys = ["schedule.steps="] * ("schedule" in names) + ["method.steps="] * ("steps" in names)
    given = [o for o in overrides if o.lstrip("+").startswith(tuple(keys))]
    if examples is None or not given:
        return []
    return [
        f"{given[-1]} with budget.examples={examples}: the search runs until the budget is spent, "
        "not for that many generations (budget.examples=null runs the steps)"
    ]


def preflight(
    cfg: DictConfig, run_dir: str | Path | None = None, overrides: Sequence[str] | None = None
) -> Plan:
    """Check a composed run config (see the module docstring); raises ConfigError.
    `overrides`: the command line's (`run.py`), to tell a task asked for from the default one."""
    objects, run, problems = build(cfg)
    if overrides is not None and (problem := task_choice_problem(cfg, overrides)):
        problems.append(problem)
    warnings: list[str] = []
    models, method = objects.get("model"), objects.get("method")
    for name in ("model", "task"):  # the files, once their objects are valid
        if objects.get(name) is not None:
            problems += objects[name].problems()
    if models is not None and method is not None:
        problems += method.problems(models)
    tasks = objects.get("task")
    if run is not None and run.selection == "validation" and not getattr(tasks, "has_validation", True):
        problems.append(
            "selection='validation': the task pool holds out no validation set; set "
            "task.validation_size (e.g. {TASK: 200}) or choose selection=all_draws or last_draw"
        )
    if not problems and method is not None:
        warnings += method.warnings(models)
        warnings += _steps_under_a_budget(run, method, overrides or ())
    if run_dir is not None and (problem := folder_problem(Path(run_dir))):
        problems.append(problem)
    elif run_dir is not None:
        problems += run_folder_problems(Path(run_dir), run_inputs(objects))
    if problems:
        raise ConfigError(problems)
    return Plan(run, objects, warnings)


def device_problem(device: str, evaluators: list[Any] = ()) -> str | None:
    """Whether the device asked for exists (imports torch: run after the config checks)."""
    import torch

    wants_cuda = device.startswith("cuda") or any(getattr(e, "needs_cuda", False) for e in evaluators)
    if wants_cuda and not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (" (a CPU-only build)" if torch.version.cuda is None else "")
        what = f"device={device!r}" if device.startswith("cuda") else "evaluator=vllm (needs a CUDA GPU)"
        return f"{what}: CUDA is not available with {build}; use device=cpu or device=auto"
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        return f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device == "mps" and not torch.backends.mps.is_available():
        return "device='mps': MPS is not available here; use device=cpu or device=auto"
    return None
