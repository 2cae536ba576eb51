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


def write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    from sae_merging.utils.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(e.to_json()) + "\n" for e in examples))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
