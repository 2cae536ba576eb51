"""The tasks' settings (`task=`), checked before anything heavy is imported or read.

`TaskPoolSettings` checks the pool's sample sizes against the task names; the loaders'
settings (`Gsm8kSettings`, `MmluProxSettings`) check their arguments and, in `problems()`, that
every local data file exists and each of its lines is JSON (naming the file and the line).
Hub sources are left to the loaders (they may be downloaded or cached).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sae_merging.tasks.base import is_local_source, read_jsonl
from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

LETTERS = "ABCDEFGHIJKLMNOP"
# how the final model is chosen (`selection=`, see runtime/selection.py); `validation` needs the
# task pool's validation set
SELECTIONS = ("last_draw", "all_draws", "validation")
# how per-task results make one task score p (runtime.fitness.aggregate): over all items (eq. 3's
# sum over the N instances, divided by N) or the mean of the tasks' accuracies
AGGREGATES = ("instances", "task_mean")
LANG_FIELD = "{lang}"
GSM8K_FIELDS = ("question", "answer")  # what every row of a local GSM8K file needs
MMLU_FIELDS = ("question",)  # and of MMLU-ProX (its options and answer: mmlu_prox.to_example)


def jsonl_problem(path: Path, required: Sequence[str] = (), allow_empty: bool = True) -> str | None:
    """Why a JSONL file cannot be read (None when every non-empty line is a JSON object with the
    `required` fields, and there is one unless `allow_empty`)."""
    try:
        rows = read_jsonl(path, required, allow_empty)
    except ValueError as error:  # names the file and the line
        return str(error)
    except PermissionError:
        return f"{path} is not readable"
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    return None if bad is None else f"{path}: row {bad + 1} is not a JSON object"


def data_dir_problem(data_dir: str) -> str | None:
    """Why a local task's data folder cannot be read (None when it can)."""
    path = Path(data_dir).expanduser()
    if path.is_dir() and os.access(path, os.R_OK | os.X_OK):
        return None
    state = "is not readable" if path.is_dir() else "is not a folder" if path.exists() else "does not exist"
    return (
        f"task.data_dir={data_dir!r} {state}: set task.data_dir=DIR (or SAE_MERGING_DATA) to the folder "
        "holding the task's files (task=paper_local: gsm8k/, mmlu_prox_lite_en/, mmlu_pro_validation/)"
    )


def source_problems(key: str, source: str, split: str, required: Sequence[str] = ()) -> list[str]:
    """Problems of one split's local source (a folder holding `<split>.jsonl`, or a file): it
    must hold rows, each with the `required` fields."""
    if not is_local_source(source):
        return []
    path = Path(source).expanduser()
    file = path / f"{split}.jsonl" if path.is_dir() else path
    if not file.is_file():
        expected = f"a folder with {split}.jsonl or a .jsonl file"
        return [f"{key}={source!r}: no {split} data at {str(file)!r} ({expected})"]
    problem = jsonl_problem(file, required, allow_empty=False)
    return [f"{key}: {problem}"] if problem else []


@dataclass(eq=False)
class Gsm8kSettings(Settings, target="sae_merging.tasks.gsm8k.load_gsm8k"):
    source: str = "openai/gsm8k"
    test_source: str | None = None
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    name: str = "gsm8k"
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        self.source = str(self.source)
        self.test_source = None if self.test_source is None else str(self.test_source)
        check.integer("num_fewshot", self.num_fewshot, 0)
        check.integer("fewshot_seed", self.fewshot_seed)
        check.text("name", self.name)
        check.integer("max_new_tokens", self.max_new_tokens, 1)

    def problems(self, key: str = "task") -> list[str]:
        return source_problems(f"{key}.source", self.source, "train", GSM8K_FIELDS) + source_problems(
            f"{key}.{'test_source' if self.test_source else 'source'}",
            self.test_source or self.source,
            "test",
            GSM8K_FIELDS,
        )


@dataclass(eq=False)
class MmluProxSettings(Settings, target="sae_merging.tasks.mmlu_prox.load_mmlu_prox"):
    test_source: str = "li-lab/MMLU-ProX"
    opt_source: str | None = None
    languages: Sequence[str] = ("en",)
    name: str = "mmlu_prox"
    max_options: int = 10

    def __post_init__(self) -> None:
        self.languages = (self.languages,) if isinstance(self.languages, str) else tuple(self.languages)
        self.test_source = str(self.test_source)
        self.opt_source = str(self.opt_source or self.test_source)
        check.integer("max_options", self.max_options, 1, len(LETTERS))
        check.text("name", self.name)
        if not self.languages:
            raise check.SettingError("languages", [], "must name at least one language")
        for key, source in (("test_source", self.test_source), ("opt_source", self.opt_source)):
            if len(self.languages) > 1 and is_local_source(source) and LANG_FIELD not in source:
                raise check.SettingError(
                    key,
                    source,
                    f"holds one language, but languages={list(self.languages)}; put {LANG_FIELD} in "
                    "the path to read one file or folder per language",
                )

    def problems(self, key: str = "task") -> list[str]:
        found = []
        for language in self.languages:
            found += source_problems(
                f"{key}.test_source", self.test_source.replace(LANG_FIELD, language), "test", MMLU_FIELDS
            )
            found += source_problems(
                f"{key}.opt_source", self.opt_source.replace(LANG_FIELD, language), "validation", MMLU_FIELDS
            )
        return found


def check_sizes(known: Sequence[str] | None, opt_size, test_size, stratify, validation_size=None) -> tuple:
    """A pool's per-task sample sizes, stratified tasks and validation sizes, checked against the
    task names (`known`; None where a task of your own is named only once it is loaded)."""
    opt_size, test_size, stratify = dict(opt_size or {}), dict(test_size or {}), set(stratify or ())
    validation_size = dict(validation_size or {})
    for key, sizes in (
        ("opt_size", opt_size),
        ("test_size", test_size),
        ("validation_size", validation_size),
    ):
        for name, size in sizes.items():
            if known is not None and name not in known:
                raise check.SettingError(key, name, f"names an unknown task; tasks: {', '.join(known)}")
            if key == "validation_size" and isinstance(size, float):
                check.number(f"{key}.{name}", size, 0, 1, low_open=True, high_open=True)
            else:
                check.integer(f"{key}.{name}", size, 1, optional=True)
    for name in sorted(stratify):
        if known is not None and name not in known:
            raise check.SettingError("stratify", name, f"names an unknown task; tasks: {', '.join(known)}")
    return opt_size, test_size, stratify, validation_size


@dataclass(eq=False)
class TaskPoolSettings(Settings, target="sae_merging.tasks.pool.TaskPool"):
    """Tasks plus per-task sample sizes (`None`: the whole split). `data_dir`: the folder the
    local tasks' files are read from (their sources interpolate it); checked first, so a
    missing folder is one line rather than one per file."""

    tasks: Sequence = ()
    opt_size: Mapping[str, int | None] = field(default_factory=dict)
    test_size: Mapping[str, int | None] = field(default_factory=dict)
    stratify: Sequence[str] = ()
    validation_size: Mapping[str, int | float | None] = field(default_factory=dict)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        self.data_dir = None if self.data_dir is None else str(self.data_dir)
        self.opt_size, self.test_size, self.stratify, self.validation_size = check_sizes(
            self.declared_names(), self.opt_size, self.test_size, self.stratify, self.validation_size
        )

    @property
    def has_validation(self) -> bool:
        """Whether a validation set is held out (`selection=validation` needs one)."""
        return any(size is not None for size in self.validation_size.values())

    def declared_names(self) -> list[str] | None:
        """Task names known without loading data (the loaders' settings name them)."""
        names = [getattr(t, "name", None) for t in self.tasks]
        return None if None in names else names

    def problems(self) -> list[str]:
        """The data folder's problem, else the local data files' problems (each loader's)."""
        if self.data_dir is not None and (problem := data_dir_problem(self.data_dir)):
            return [problem]
        found = []
        for index, task in enumerate(self.tasks):
            if hasattr(task, "problems"):
                found += task.problems(f"task.tasks[{index}]")
        return found
