"""Task data in one rendered form shared by every evaluator.

An example carries its prompt already rendered (few-shot context included), so the built-in
evaluator, the lm-eval backend and expert training all see the same strings.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from sae_merging.tasks.extraction import exact_match, regex_extract

TaskKind = Literal["generate", "multiple_choice"]
SPLITS = ("train", "opt", "test")


@dataclass(frozen=True)
class Example:
    """One scored item.

    `generate`: the model continues `prompt` greedily; correct when the extracted number equals
    `answer`. `target` is the reference continuation (used to train lab experts and as few-shot
    text). `multiple_choice`: each of `choices` is scored as a continuation of `prompt` by
    log-likelihood; correct when the best is `label`. `group` is the stratum (language,
    category) used for stratified sampling. `messages`: the prompt as (role, content) chat
    turns, few-shot examples as user/assistant turns, for tasks scored through the model's
    chat template (`TaskData.chat_template`); `prompt` stays the plain-text form.
    """

    uid: str
    prompt: str
    target: str = ""
    answer: str = ""
    choices: tuple[str, ...] = ()
    label: int = -1
    group: str = ""
    messages: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        row = asdict(self)
        row["choices"] = list(self.choices)
        if self.messages:
            row["messages"] = [list(message) for message in self.messages]
        else:
            del row["messages"]  # the files of tasks without chat turns stay as they were
        return row

    @classmethod
    def from_json(cls, row: dict) -> Example:
        messages = tuple(tuple(message) for message in row.get("messages", ()))
        return cls(**{**row, "choices": tuple(row.get("choices", ())), "messages": messages})


@dataclass
class TaskData:
    """A task: how it is scored and its examples per split (`train`, `opt`, `test`).

    `chat_template`: prompts are the examples' `messages` through the tokenizer's chat template
    (as lm-eval's `--apply_chat_template`). `target_delimiter`: put before every choice of a
    multiple-choice task (dropped under the chat template, as lm-eval drops it). `scorer`: how
    outputs become correct or not (`Scorer`); None keeps the GSM8K answer filter of the
    evaluator (`extraction`) and plain multiple-choice accuracy.
    """

    name: str
    kind: TaskKind
    splits: dict[str, list[Example]]
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 32
    metadata: dict = field(default_factory=dict)
    chat_template: bool = False
    target_delimiter: str = ""
    scorer: Scorer | None = None

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


def mean_percent(accuracy: Mapping[str, float]) -> float:
    """A model's mean accuracy over its tasks (task -> fraction), in %, summed in task-name
    order: every report prints the same float, so the same rounding (91.25 is not 91.3 in one
    table and 91.2 in another)."""
    return sum(100 * accuracy[task] for task in sorted(accuracy)) / len(accuracy)


class Scorer:
    """How a task's outputs become correct or not, where the defaults do not say it (tasks of
    one's own: a regex extraction, length-normalised accuracy; lm-eval's tasks: their own
    filters and metrics). `unsupported`: why the built-in evaluator cannot score the task and
    lm-eval itself must run it (None: it can)."""

    unsupported: str | None = None

    def generations(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[bool]:
        raise NotImplementedError(f"{type(self).__name__} scores no generations")

    def choices(self, examples: Sequence[Example], loglikelihoods: Sequence[Sequence[float]]) -> list[bool]:
        raise NotImplementedError(f"{type(self).__name__} scores no choices")


# Multiple-choice accuracies, as lm-eval computes them: the most likely choice (`acc`), or the
# most likely per character (`acc_norm`) or per UTF-8 byte (`acc_bytes`) of the choice text.
CHOICE_METRICS = ("acc", "acc_norm", "acc_bytes")


def best_choice(loglikelihoods: Sequence[float], choices: Sequence[str], metric: str = "acc") -> int:
    """The index of the best choice under `metric` (the first on a tie, as numpy's argmax)."""
    if metric == "acc_norm":
        scores = [ll / len(c) for ll, c in zip(loglikelihoods, choices, strict=True)]
    elif metric == "acc_bytes":
        scores = [ll / len(c.encode("utf-8")) for ll, c in zip(loglikelihoods, choices, strict=True)]
    elif metric == "acc":
        scores = list(loglikelihoods)
    else:
        raise ValueError(f"unknown multiple-choice metric {metric!r}; valid: {', '.join(CHOICE_METRICS)}")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


@dataclass(frozen=True)
class ChoiceScorer(Scorer):
    """Multiple-choice accuracy under one of `CHOICE_METRICS`."""

    metric: str = "acc"

    def choices(self, examples: Sequence[Example], loglikelihoods: Sequence[Sequence[float]]) -> list[bool]:
        return [
            best_choice(lls, e.choices, self.metric) == e.label
            for e, lls in zip(examples, loglikelihoods, strict=True)
        ]


def continuations(task: TaskData, example: Example) -> list[str]:
    """The strings scored after the prompt for each choice: the task's target delimiter, then
    the choice (under the chat template no delimiter: the prompt ends the user's turn)."""
    delimiter = "" if task.chat_template else task.target_delimiter
    return [delimiter + choice for choice in example.choices]


def chat_prompt(tokenizer, messages: Sequence[Sequence[str]]) -> str:
    """`messages` through the tokenizer's chat template, opening the assistant's turn (or
    continuing it, where the last turn is the assistant's), as lm-eval's HF backend applies it
    (a template that refuses a system turn gets none)."""
    import jinja2

    history = [{"role": role, "content": content} for role, content in messages]
    opens = not history or history[-1]["role"] != "assistant"
    options = {"tokenize": False, "add_generation_prompt": opens, "continue_final_message": not opens}
    try:
        return tokenizer.apply_chat_template(history, **options)
    except jinja2.exceptions.TemplateError:
        return tokenizer.apply_chat_template([m for m in history if m["role"] != "system"], **options)


def render_prompts(task: TaskData, examples: Sequence[Example], tokenizer) -> list[str]:
    """The prompt strings the model sees: the plain prompts, or the chat turns through the
    tokenizer's chat template where the task asks for it."""
    if not task.chat_template:
        return [e.prompt for e in examples]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"task {task.name!r} asks for the chat template, but the model's tokenizer has none; "
            "set task.chat_template=false"
        )
    return [chat_prompt(tokenizer, e.messages) for e in examples]


def fewshot_turns(
    shots: Sequence[tuple[str, str]],
    question: str,
    target_delimiter: str = " ",
    fewshot_delimiter: str = "\n\n",
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A prompt with its few-shot examples ((question, answer) pairs), as lm-eval builds it: the
    plain text (each shot's question, the target delimiter, its answer, the few-shot
    delimiter; the question last) and the chat turns (a user turn per question and an
    assistant turn per answer, as `--apply_chat_template` with its default
    `fewshot_as_multiturn`)."""
    text = "".join(f"{q}{target_delimiter}{a}{fewshot_delimiter}" for q, a in shots) + question
    turns = [turn for q, a in shots for turn in (("user", q), ("assistant", a))]
    return text, (*turns, ("user", question))


def draw_shots(
    rows: Sequence[dict],
    pool: Sequence[dict],
    n: int,
    seed: int,
    same_split: bool,
    key: Callable[[dict], object] | None = None,
) -> list[list[dict]]:
    """Few-shot rows for each row, drawn as lm-eval's default sampler draws them: one
    `random.Random(seed)` advanced over the rows in order; where the rows come from the pool
    itself (`same_split`), n + 1 are drawn and the row dropped, and should that leave too few
    (duplicates of the row), n are drawn again from the pool without it. `key`: what makes a
    shot the row itself (default: equal rows); given, such shots are dropped from every draw."""
    rng = random.Random(seed)
    same = key or (lambda row: row)
    draws = []
    for row in rows:
        if n == 0:
            draws.append([])
            continue
        drawn = rng.sample(list(pool), n + same_split)
        if not same_split and key is None:
            draws.append(drawn)
            continue
        others = [shot for shot in drawn if same(shot) != same(row)][:n]
        if len(others) < n:
            others = rng.sample([shot for shot in pool if same(shot) != same(row)], n)
        draws.append(others)
    return draws


@dataclass(frozen=True)
class RegexScorer(Scorer):
    """A generation is correct when its extracted answer (lm-eval's `regex` filter: `pattern`,
    `group_select`, `fallback`) exactly matches the example's `answer` (lm-eval's
    `exact_match`, optionally ignoring case and the `regexes_to_ignore`)."""

    pattern: str = "(.+)"
    group_select: int = 0
    fallback: str = "[invalid]"
    ignore_case: bool = True
    regexes_to_ignore: tuple[str, ...] = ()

    def extract(self, output: str) -> str:
        return regex_extract(output, self.pattern, self.group_select, self.fallback)

    def generations(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[bool]:
        return [
            exact_match(self.extract(output), e.answer, self.ignore_case, self.regexes_to_ignore)
            for e, output in zip(examples, outputs, strict=True)
        ]
