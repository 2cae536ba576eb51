"""MMLU-ProX: MMLU-Pro's ten-option questions in 29 languages, scored as multiple choice.

Each question is shown MMLU-Pro style, options lettered A, B, ...; the model's answer is the
letter whose continuation (" A", " B", ...) is most likely after `Answer:`. This is the
log-likelihood form of the task (one forward pass per question), not lm-eval's chain-of-thought
generation (`mmlu_prox_<lang>`, thousands of generated tokens per question), which the fitness
loop could not afford; the instruction is in English for every language. Options that are
missing or "N/A" (MMLU-Pro pads to ten) are dropped and the rest lettered in order.

The test split is MMLU-ProX's test set, the optimization split its validation set (MMLU-Pro's
validation questions, translated). `group` is the language, so a pool can sample stratified by
language, as the paper's 1,000-question test subset is.
"""

from __future__ import annotations

from collections.abc import Sequence

from sae_merging.tasks.base import Example, TaskData, load_rows
from sae_merging.tasks.settings import LANG_FIELD, LETTERS, MmluProxSettings

# The languages of lm-eval's mmlu_prox tasks (configs of li-lab/MMLU-ProX).
LANGUAGES = (
    "af", "ar", "bn", "cs", "de", "en", "es", "fr", "hi", "hu", "id", "it", "ja", "ko", "mr",
    "ne", "pt", "ru", "sr", "sw", "te", "th", "uk", "ur", "vi", "wo", "yo", "zh", "zu",
)  # fmt: skip
INSTRUCTION = "The following is a multiple choice question. Answer with the letter of the correct option."


def render_prompt(question: str, options: Sequence[str]) -> str:
    lines = [INSTRUCTION, "", f"Question: {question}", "Options:"]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([*lines, "Answer:"])


def row_options(row: dict, max_options: int) -> list[str | None]:
    """The option slots of a row: an `options` list (MMLU-Pro) or `option_0`.. fields (MMLU-ProX)."""
    if "options" in row:
        return list(row["options"])[:max_options]
    return [row.get(f"option_{i}") for i in range(max_options)]


def to_example(row: dict, uid: str, language: str, max_options: int = 10) -> Example:
    slots = row_options(row, max_options)
    kept = [i for i, option in enumerate(slots) if option is not None and str(option).strip() != "N/A"]
    answer = row.get("answer_index")
    answer = LETTERS.index(row["answer"]) if answer is None else int(answer)
    if answer not in kept:
        raise ValueError(f"{uid}: its answer (option {answer}) is missing, N/A or beyond max_options")
    label = kept.index(answer)
    return Example(
        uid=uid,
        prompt=render_prompt(row["question"], [str(slots[i]) for i in kept]),
        target=f" {LETTERS[label]}",
        choices=tuple(f" {LETTERS[j]}" for j in range(len(kept))),
        label=label,
        group=language,
    )


def load_mmlu_prox(
    test_source: str = "li-lab/MMLU-ProX",
    opt_source: str | None = None,
    languages: Sequence[str] = ("en",),
    name: str = "mmlu_prox",
    max_options: int = 10,
) -> TaskData:
    """MMLU-ProX in `languages`. A source is a hub id (`li-lab/MMLU-ProX` or
    `li-lab/MMLU-ProX-Lite`, one config per language; needs the hub), a local .jsonl file, or a
    local folder holding test.jsonl / validation.jsonl; a local path holds one language unless
    it contains `{lang}`, which is replaced by each language. `opt_source` defaults to
    `test_source` (its validation split)."""
    settings = MmluProxSettings(test_source, opt_source, languages, name, max_options)  # checks
    languages, test_source, opt_source = settings.languages, settings.test_source, settings.opt_source
    splits: dict[str, list[Example]] = {"train": [], "opt": [], "test": []}
    for language in languages:
        rows = load_rows(
            {
                "test": test_source.replace(LANG_FIELD, language),
                "validation": opt_source.replace(LANG_FIELD, language),
            },
            config_name=language,
        )
        for split, docs in (("opt", rows["validation"]), ("test", rows["test"])):
            splits[split] += [
                to_example(doc, f"{name}/{split}/{language}/{i}", language, max_options)
                for i, doc in enumerate(docs)
            ]
    metadata = {"test_source": test_source, "opt_source": opt_source, "languages": list(languages)}
    return TaskData(name, "multiple_choice", splits, (), 0, metadata)
