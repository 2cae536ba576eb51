"""Task data in one rendered form shared by every evaluator.

An example carries its prompt already rendered (few-shot context included), so the built-in
evaluator, the lm-eval backend and expert training all see the same strings.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

TaskKind = Literal["generate", "multiple_choice"]
SPLITS = ("train", "opt", "test")


@dataclass(frozen=True)
class Example:
    """One scored item.

    `generate`: the model continues `prompt` greedily; correct when the extracted number equals
    `answer`. `target` is the reference continuation (used to train lab experts and as few-shot
    text). `multiple_choice`: each of `choices` is scored as a continuation of `prompt` by
    log-likelihood; correct when the best is `label`. `group` is the stratum (language,
    category) used for stratified sampling.
    """

    uid: str
    prompt: str
    target: str = ""
    answer: str = ""
    choices: tuple[str, ...] = ()
    label: int = -1
    group: str = ""

    def to_json(self) -> dict:
        row = asdict(self)
        row["choices"] = list(self.choices)
        return row

    @classmethod
    def from_json(cls, row: dict) -> Example:
        return cls(**{**row, "choices": tuple(row.get("choices", ()))})


@dataclass
class TaskData:
    """A task: how it is scored and its examples per split (`train`, `opt`, `test`)."""

    name: str
    kind: TaskKind
    splits: dict[str, list[Example]]
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 32
    metadata: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


def sample_examples(
    examples: Sequence[Example], n: int | None, seed: int, stratify: bool = False
) -> list[Example]:
    """A seeded random sample of `n` examples (all of them, shuffled, when `n` is None or larger
    than the pool). With `stratify`, each `group` keeps its share of the pool (largest-remainder
    rounding), as the paper's language-stratified MMLU-ProX subset does."""
    rng = random.Random(seed)
    if n is None or n >= len(examples):
        chosen = list(examples)
        rng.shuffle(chosen)
        return chosen
    if not stratify:
        return rng.sample(list(examples), n)
    by_group: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_group[example.group].append(example)
    groups = sorted(by_group)
    quotas = {g: n * len(by_group[g]) / len(examples) for g in groups}
    counts = {g: int(quotas[g]) for g in groups}
    leftovers = sorted(groups, key=lambda g: (counts[g] - quotas[g], g))
    for g in leftovers[: n - sum(counts.values())]:
        counts[g] += 1
    chosen = [e for g in groups for e in rng.sample(by_group[g], counts[g])]
    rng.shuffle(chosen)
    return chosen


def validation_examples(
    task: str, pool: Sequence[Example], size: int, seed: int, stratify: bool = False
) -> list[Example]:
    """The validation set held out of a task's `opt` pool for run seed `seed` (`task.validation_size`)."""
    from sae_merging.utils.files import stable_hash

    return sample_examples(pool, size, int(stable_hash([seed, task, "validation"]), 16), stratify)


def write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    from sae_merging.utils.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(e.to_json()) + "\n" for e in examples))


def read_jsonl(path: Path, required: Sequence[str] = (), allow_empty: bool = True) -> list[dict]:
    """The rows of a JSONL file. A bad line, a row that is not an object or lacks one of the
    `required` fields, and (unless `allow_empty`) a file without rows are each one error
    naming the file and the line."""
    from sae_merging.utils.settings import InputError

    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise InputError(
                    f"{path}:{number}: missing field {missing[0]!r} (each line needs {list(required)})"
                )
            rows.append(row)
    if not rows and not allow_empty:
        raise InputError(f"{path}: holds no rows (each line should be a JSON object)")
    return rows


def is_local_source(source: str) -> bool:
    """A data source that cannot be a hub id (`owner/name`) names a local file or folder."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


def load_rows(sources: dict[str, str], config_name: str | None = None) -> dict[str, list[dict]]:
    """Rows of each split, keyed as `sources` is: {split: source}.

    A source is a local folder holding `<split>.jsonl`, a local `.jsonl` file (that split
    only), or a hub dataset id read with `datasets.load_dataset(source, config_name)` (needs the
    hub, or its cache). Two splits never silently share one local file (test rows would leak
    into optimization).
    """
    sources = {split: str(source) for split, source in sources.items()}  # Path objects welcome
    files: dict[str, Path] = {}
    for split, source in sources.items():
        if is_local_source(source):
            path = Path(source).expanduser()
            file = path / f"{split}.jsonl" if path.is_dir() else path
            if not file.is_file():
                raise FileNotFoundError(f"no {split} data at {str(file)!r} (from source {source!r})")
            files[split] = file
    resolved = [file.resolve() for file in files.values()]
    for split, file in files.items():
        if resolved.count(file.resolve()) > 1:
            raise ValueError(f"splits must not share a file: {split} and another read {str(file)!r}")
    return {
        split: read_jsonl(files[split]) if split in files else _hub_rows(source, config_name, split)
        for split, source in sources.items()
    }


def _hub_rows(source: str, config_name: str | None, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(source, config_name, split=split))
    except Exception as error:  # offline, unknown id or config: say which and how to go on
        raise FileNotFoundError(
            f"{source!r} is no local path, and its split {split!r} (config {config_name!r}) could "
            f"not be loaded from the hub ({type(error).__name__}: {error}); offline, pass a local "
            f"path instead: a .jsonl file or a folder holding {split}.jsonl"
        ) from error
