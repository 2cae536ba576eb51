"""Tasks of one's own from JSONL files, one JSON object per line.

- `generate`: fields `prompt` and `answer` (optional `target`: the text a few-shot example
  shows after its prompt, default the answer). The model continues the prompt greedily until a
  `stop` string; the answer is extracted as lm-eval's `regex` filter extracts it (`extract`,
  `group_select`, `fallback`) and compared by lm-eval's `exact_match` (`ignore_case`).
- `multiple_choice`: fields `prompt`, `choices` (a list of texts) and `gold` (the index of the
  right one). Each choice is scored by its log-likelihood after the prompt and the target
  delimiter; `metric` is `acc` (the most likely choice), `acc_norm` (per character, lm-eval's
  length-normalised accuracy) or `acc_bytes` (per byte).

An optional `group` field is the stratum for `task.stratify`. The splits are `opt_source` and
`test_source`, or one `source` split by `test_fraction` with `split_seed`. Prompts (few-shot
examples, chat turns) are what lm-eval builds for a task YAML with `doc_to_text: "{{prompt}}"`,
the answer (or the choice) as `doc_to_target`, the optimization split as its training split
(see docs/your-own-tasks.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from sae_merging.tasks.base import ChoiceScorer, Example, RegexScorer, TaskData, draw_shots, fewshot_turns
from sae_merging.tasks.settings import JsonlTaskSettings, jsonl_task_rows


def split_rows(rows: Sequence[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(opt, test) of one file's rows: a seeded share `test_fraction` of them (at least one of
    each) is the test split; both keep the file's order."""
    count = min(len(rows) - 1, max(1, round(test_fraction * len(rows))))
    if len(rows) < 2:
        raise ValueError(f"a single source needs at least 2 rows to split, got {len(rows)}")
    test = set(random.Random(seed).sample(range(len(rows)), count))
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def shot_text(row: dict, kind: str) -> str:
    """What a few-shot example shows after its prompt."""
    if kind == "multiple_choice":
        return row["choices"][row["gold"]]
    return str(row.get("target", row["answer"]))


def load_jsonl_task(
    name: str = "",
    kind: str = "generate",
    source: str | None = None,
    opt_source: str | None = None,
    test_source: str | None = None,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    num_fewshot: int = 0,
    fewshot_seed: int = 1234,
    chat_template: bool = False,
    target_delimiter: str = " ",
    fewshot_delimiter: str = "\n\n",
    stop: Sequence[str] = ("\n\n",),
    max_new_tokens: int = 64,
    extract: str = "(.+)",
    group_select: int = 0,
    fallback: str = "[invalid]",
    ignore_case: bool = True,
    metric: str = "acc",
) -> TaskData:
    """A task from JSONL files; see the module docstring. Few-shot examples come from the
    optimization split, drawn as lm-eval's default sampler draws them (`fewshot_seed`)."""
    settings = JsonlTaskSettings(
        name, kind, source, opt_source, test_source, test_fraction, split_seed, num_fewshot,
        fewshot_seed, chat_template, target_delimiter, fewshot_delimiter, stop, max_new_tokens,
        extract, group_select, fallback, ignore_case, metric,
    )  # checks  # fmt: skip
    read = {key: jsonl_task_rows(Path(path).expanduser(), kind) for key, path in settings.files().items()}
    if source is not None:
        opt_rows, test_rows = split_rows(read["source"], test_fraction, split_seed)
    else:
        opt_rows, test_rows = read["opt_source"], read["test_source"]
    splits: dict[str, list[Example]] = {"train": []}
    for split, rows in (("opt", opt_rows), ("test", test_rows)):
        shots = draw_shots(rows, opt_rows, num_fewshot, fewshot_seed, same_split=rows is opt_rows)
        splits[split] = []
        for i, (row, row_shots) in enumerate(zip(rows, shots, strict=True)):
            pairs = [(shot["prompt"], shot_text(shot, kind)) for shot in row_shots]
            prompt, messages = fewshot_turns(pairs, row["prompt"], target_delimiter, fewshot_delimiter)
            common = {"uid": f"{name}/{split}/{i}", "prompt": prompt, "group": str(row.get("group", ""))}
            if chat_template:
                common["messages"] = messages
            if kind == "generate":
                example = Example(
                    **common, target=target_delimiter + shot_text(row, kind), answer=str(row["answer"])
                )
            else:
                example = Example(**common, choices=tuple(row["choices"]), label=row["gold"])
            splits[split].append(example)
    if kind == "generate":
        scorer = RegexScorer(extract, group_select, fallback, ignore_case)
    else:
        scorer = ChoiceScorer(metric)
    metadata = {"files": settings.files(), "num_fewshot": num_fewshot, "chat_template": chat_template}
    return TaskData(
        name,
        kind,
        splits,
        settings.stop,
        max_new_tokens,
        metadata,
        chat_template=chat_template,
        target_delimiter=target_delimiter,
        scorer=scorer,
    )
