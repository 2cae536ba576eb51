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
from sae_merging.utils.settings import configured_by


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


@configured_by(JsonlTaskSettings)
def load_jsonl_task(settings: JsonlTaskSettings) -> TaskData:
    """A task from JSONL files; see the module docstring. Few-shot examples come from the
    optimization split, drawn as lm-eval's default sampler draws them (`fewshot_seed`). Called
    with `JsonlTaskSettings`' arguments."""
    name, kind, chat_template = settings.name, settings.kind, settings.chat_template
    target_delimiter, fewshot_delimiter = settings.target_delimiter, settings.fewshot_delimiter
    num_fewshot = settings.num_fewshot
    read = {key: jsonl_task_rows(Path(path).expanduser(), kind) for key, path in settings.files().items()}
    if settings.source is not None:
        opt_rows, test_rows = split_rows(read["source"], settings.test_fraction, settings.split_seed)
    else:
        opt_rows, test_rows = read["opt_source"], read["test_source"]
    splits: dict[str, list[Example]] = {"train": []}
    for split, rows in (("opt", opt_rows), ("test", test_rows)):
        shots = draw_shots(rows, opt_rows, num_fewshot, settings.fewshot_seed, same_split=rows is opt_rows)
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
        scorer = RegexScorer(settings.extract, settings.group_select, settings.fallback, settings.ignore_case)
    else:
        scorer = ChoiceScorer(settings.metric)
    metadata = {"files": settings.files(), "num_fewshot": num_fewshot, "chat_template": chat_template}
    return TaskData(
        name,
        kind,
        splits,
        settings.stop,
        settings.max_new_tokens,
        metadata,
        chat_template=chat_template,
        target_delimiter=target_delimiter,
        scorer=scorer,
    )
