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

from sae_merging.tasks.base import CHOICE_METRICS, is_local_source, read_jsonl
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
class Gsm8kSettings(Settings):
    source: str = "openai/gsm8k"
    test_source: str | None = None
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    name: str = "gsm8k"
    max_new_tokens: int = 256
    chat_template: bool = False

    def __post_init__(self) -> None:
        self.source = str(self.source)
        self.test_source = None if self.test_source is None else str(self.test_source)
        check.integer("num_fewshot", self.num_fewshot, 0)
        check.integer("fewshot_seed", self.fewshot_seed)
        check.text("name", self.name)
        check.integer("max_new_tokens", self.max_new_tokens, 1)
        check.flag("chat_template", self.chat_template)

    def problems(self, key: str = "task") -> list[str]:
        return source_problems(f"{key}.source", self.source, "train", GSM8K_FIELDS) + source_problems(
            f"{key}.{'test_source' if self.test_source else 'source'}",
            self.test_source or self.source,
            "test",
            GSM8K_FIELDS,
        )


@dataclass(eq=False)
class MmluProxSettings(Settings):
    test_source: str = "li-lab/MMLU-ProX"
    opt_source: str | None = None
    languages: Sequence[str] = ("en",)
    name: str = "mmlu_prox"
    max_options: int = 10
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    chat_template: bool = False

    def __post_init__(self) -> None:
        check.integer("num_fewshot", self.num_fewshot, 0)
        check.integer("fewshot_seed", self.fewshot_seed)
        check.flag("chat_template", self.chat_template)
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


JSONL_KINDS = ("generate", "multiple_choice")
JSONL_FIELDS = {"generate": ("prompt", "answer"), "multiple_choice": ("prompt", "choices", "gold")}


def jsonl_task_rows(path: Path, kind: str) -> list[dict]:
    """The rows of a task's JSONL file, each checked: the fields of its kind present (`prompt`
    and `answer`, or `prompt`, `choices` and `gold`), a text prompt, at least two text choices
    and a gold index among them. A bad row is one error naming the file and the line."""
    rows = read_jsonl(path, required=JSONL_FIELDS[kind], allow_empty=False)
    numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    for number, row in zip(numbers, rows, strict=True):
        where = f"{path}:{number}"
        if not isinstance(row["prompt"], str):
            raise check.InputError(f"{where}: 'prompt' must be text, got {row['prompt']!r}")
        if kind == "generate":
            if not isinstance(row["answer"], str | int | float) or isinstance(row["answer"], bool):
                raise check.InputError(f"{where}: 'answer' must be text or a number, got {row['answer']!r}")
            continue
        choices, gold = row["choices"], row["gold"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise check.InputError(
                f"{where}: 'choices' must be a list of at least two texts, got {choices!r}"
            )
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise check.InputError(
                f"{where}: 'gold' must be the right choice's index, 0 to {len(choices) - 1}, got {gold!r}"
            )
    return rows


def local_file_problem(key: str, source: str | None) -> str | None:
    """Why a local file named by a setting is missing (None when it is a file)."""
    if source is None or Path(source).expanduser().is_file():
        return None
    return f"{key}={source!r}: no such file"


@dataclass(eq=False)
class JsonlTaskSettings(Settings):
    """A task of one's own from JSONL files (see tasks/jsonl.py): either `opt_source` and
    `test_source`, or one `source` split by `test_fraction` (seeded by `split_seed`)."""

    name: str = ""
    kind: str = "generate"
    source: str | None = None
    opt_source: str | None = None
    test_source: str | None = None
    test_fraction: float = 0.5
    split_seed: int = 0
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    chat_template: bool = False
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    stop: Sequence[str] = ("\n\n",)
    max_new_tokens: int = 64
    extract: str = "(.+)"
    group_select: int = 0
    fallback: str = "[invalid]"
    ignore_case: bool = True
    metric: str = "acc"

    def __post_init__(self) -> None:
        import re

        check.text("name", self.name)
        check.choice("kind", self.kind, JSONL_KINDS)
        for key in ("source", "opt_source", "test_source"):
            value = getattr(self, key)
            setattr(self, key, None if value is None else str(value))
        if (self.source is None) == (self.opt_source is None and self.test_source is None):
            raise check.SettingError(
                "source",
                self.source,
                "give either source (one file, split by test_fraction) or opt_source and test_source",
            )
        if self.source is None and (self.opt_source is None or self.test_source is None):
            missing = "opt_source" if self.opt_source is None else "test_source"
            raise check.SettingError(missing, None, "give both opt_source and test_source (or one source)")
        check.number("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        check.integer("split_seed", self.split_seed, 0)
        check.integer("num_fewshot", self.num_fewshot, 0)
        check.integer("fewshot_seed", self.fewshot_seed)
        check.flag("chat_template", self.chat_template)
        check.flag("ignore_case", self.ignore_case)
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        check.integer("max_new_tokens", self.max_new_tokens, 1)
        check.integer("group_select", self.group_select)
        try:
            re.compile(self.extract)
        except (re.error, TypeError) as error:
            raise check.SettingError(
                "extract", self.extract, f"must be a regular expression ({error})"
            ) from None
        check.choice("metric", self.metric, CHOICE_METRICS)

    def files(self) -> dict[str, str]:
        """The setting each file comes from, and the file."""
        if self.source is not None:
            return {"source": self.source}
        return {"opt_source": self.opt_source, "test_source": self.test_source}

    def problems(self, key: str = "task") -> list[str]:
        found = []
        for setting, source in self.files().items():
            if problem := local_file_problem(f"{key}.{setting}", source):
                found.append(problem)
                continue
            try:
                jsonl_task_rows(Path(source).expanduser(), self.kind)
            except check.InputError as error:
                found.append(f"{key}.{setting}: {error}")
        return found


@dataclass(eq=False)
class LmEvalTaskSettings(Settings):
    """An lm-eval task (see tasks/lm_eval_task.py): a registered name, a name found under
    `include_path`, or a task .yaml file."""

    task: str = ""
    include_path: str | None = None
    name: str | None = None
    opt_split: str | None = None
    num_fewshot: int | None = None
    fewshot_seed: int = 1234
    chat_template: bool = False
    metric: str | None = None
    filter: str | None = None

    def __post_init__(self) -> None:
        check.text("task", self.task)
        self.task = str(self.task)
        self.include_path = None if self.include_path is None else str(self.include_path)
        check.text("name", self.name, optional=True)
        check.text("opt_split", self.opt_split, optional=True)
        check.integer("num_fewshot", self.num_fewshot, 0, optional=True)
        check.integer("fewshot_seed", self.fewshot_seed)
        check.flag("chat_template", self.chat_template)
        check.text("metric", self.metric, optional=True)
        check.text("filter", self.filter, optional=True)
        if self.name is None:
            self.name = self.yaml().get("task") if self.is_yaml else self.task

    @property
    def is_yaml(self) -> bool:
        return self.task.endswith((".yaml", ".yml"))

    def yaml(self) -> dict:
        """The task's YAML file, read (empty where it cannot be)."""
        import yaml

        try:
            loaded = yaml.safe_load(Path(self.task).expanduser().read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def problems(self, key: str = "task") -> list[str]:
        """A missing task file or folder; a local YAML's missing or unreadable JSON data files."""
        if self.is_yaml and not Path(self.task).expanduser().is_file():
            return [f"{key}.task={self.task!r}: no such task file"]
        if self.include_path is not None and not Path(self.include_path).expanduser().is_dir():
            return [f"{key}.include_path={self.include_path!r}: no such folder"]
        config = self.yaml() if self.is_yaml else {}
        if self.is_yaml and "task" not in config:
            return [f"{key}.task={self.task!r}: not an lm-eval task YAML (it names no `task:`)"]
        found = []
        if config.get("dataset_path") == "json":
            files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
            files = files if isinstance(files, dict) else {"train": files}
            for split, names in files.items():
                for name in [names] if isinstance(names, str) else names:
                    path = Path(name).expanduser()  # datasets reads it from the working folder
                    if not path.is_file():
                        found.append(f"{key}.task: {self.task}: data_files.{split}={name!r}: no such file")
                    elif problem := jsonl_problem(path):
                        found.append(f"{key}.task: {problem}")
        return found


def check_sizes(known: Sequence[str] | None, opt_size, test_size, stratify, validation_size=None) -> tuple:
    """A pool's per-task sample sizes, stratified tasks and validation sizes, checked against the
    task names (`known`; None where a task of your own is named only once it is loaded)."""
    opt_size, test_size, stratify = dict(opt_size or {}), dict(test_size or {}), set(stratify or ())
    one_size = isinstance(validation_size, int | float) and not isinstance(validation_size, bool)
    validation_size = validation_size if one_size else dict(validation_size or {})
    for key, sizes in (
        ("opt_size", opt_size),
        ("test_size", test_size),
        ("validation_size", {"*": validation_size} if one_size else validation_size),
    ):
        for name, size in sizes.items():
            if known is not None and name not in known and name != "*":
                raise check.SettingError(key, name, f"names an unknown task; tasks: {', '.join(known)}")
            label = key if name == "*" else f"{key}.{name}"
            if key == "validation_size" and isinstance(size, float):
                check.number(label, size, 0, 1, low_open=True, high_open=True)
            else:
                check.integer(label, size, 1, optional=True)
    for name in sorted(stratify):
        if known is not None and name not in known:
            raise check.SettingError("stratify", name, f"names an unknown task; tasks: {', '.join(known)}")
    return opt_size, test_size, stratify, validation_size


def per_task(size, names: Sequence[str] | None):
    """A size given once for every task, as {task: size} (unchanged where the tasks' names are
    not known yet: `TaskPool` spreads it over the loaded tasks)."""
    if isinstance(size, int | float) and not isinstance(size, bool) and names is not None:
        return dict.fromkeys(names, size)
    return size


@dataclass(eq=False)
class TaskPoolSettings(Settings):
    """Tasks plus per-task sample sizes (`None`: the whole split). `data_dir`: the folder the
    local tasks' files are read from (their sources interpolate it); checked first, so a
    missing folder is one line rather than one per file."""

    tasks: Sequence = ()
    opt_size: Mapping[str, int | None] = field(default_factory=dict)
    test_size: Mapping[str, int | None] = field(default_factory=dict)
    stratify: Sequence[str] = ()
    validation_size: Mapping[str, int | float | None] | int | float = field(default_factory=dict)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        self.data_dir = None if self.data_dir is None else str(self.data_dir)
        self.validation_size = per_task(self.validation_size, self.declared_names())
        self.opt_size, self.test_size, self.stratify, self.validation_size = check_sizes(
            self.declared_names(), self.opt_size, self.test_size, self.stratify, self.validation_size
        )

    @property
    def has_validation(self) -> bool:
        """Whether a validation set is held out (`selection=validation` needs one)."""
        if not isinstance(self.validation_size, Mapping):
            return True  # one size for every task
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
