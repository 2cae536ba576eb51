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
from dataclasses import replace

from sae_merging.tasks.base import Example, TaskData, draw_shots, fewshot_turns, load_rows
from sae_merging.tasks.settings import LANG_FIELD, LETTERS, MmluProxSettings
from sae_merging.utils.settings import configured_by

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


@configured_by(MmluProxSettings)
def load_mmlu_prox(settings: MmluProxSettings) -> TaskData:
    """MMLU-ProX in `languages`. A source is a hub id (`li-lab/MMLU-ProX` or
    `li-lab/MMLU-ProX-Lite`, one config per language; needs the hub), a local .jsonl file, or a
    local folder holding test.jsonl / validation.jsonl; a local path holds one language unless
    it contains `{lang}`, which is replaced by each language. `opt_source` defaults to
    `test_source` (its validation split).

    `num_fewshot` questions of the same language's optimization split, each followed by its
    answer letter, come before a question (drawn as lm-eval's default sampler draws them,
    seeded per language); `chat_template`: prompts through the model's chat template, shots
    as turns, the letters scored without the leading space (as lm-eval scores choices there).
    Called with `MmluProxSettings`' arguments."""
    languages, test_source, opt_source = settings.languages, settings.test_source, settings.opt_source
    name, max_options, chat_template = settings.name, settings.max_options, settings.chat_template
    num_fewshot, fewshot_seed = settings.num_fewshot, settings.fewshot_seed
    splits: dict[str, list[Example]] = {"train": [], "opt": [], "test": []}
    for language in languages:
        rows = load_rows(
            {
                "test": test_source.replace(LANG_FIELD, language),
                "validation": opt_source.replace(LANG_FIELD, language),
            },
            config_name=language,
        )
        examples = {
            split: [
                to_example(doc, f"{name}/{split}/{language}/{i}", language, max_options)
                for i, doc in enumerate(docs)
            ]
            for split, docs in (("opt", rows["validation"]), ("test", rows["test"]))
        }
        for split in ("opt", "test"):
            splits[split] += with_shots(
                examples[split], examples["opt"], num_fewshot, fewshot_seed, split == "opt", chat_template
            )
    metadata = {"test_source": test_source, "opt_source": opt_source, "languages": list(languages)}
    delimiter = " " if chat_template else ""  # the choices' own space otherwise
    return TaskData(
        name,
        "multiple_choice",
        splits,
        (),
        0,
        metadata,
        chat_template=chat_template,
        target_delimiter=delimiter,
    )


def with_shots(
    examples: Sequence[Example], pool: Sequence[Example], n: int, seed: int, same_split: bool, chat: bool
) -> list[Example]:
    """The examples with `n` shots from `pool` before each question (a shot: its prompt, a
    space, its letter) and, for the chat template, as chat turns with bare letters as choices
    (the task's target delimiter then holds the space). Unchanged without either."""
    if n == 0 and not chat:
        return list(examples)
    draws = draw_shots(examples, pool, n, seed, same_split)
    changed = []
    for example, shots in zip(examples, draws, strict=True):
        pairs = [(shot.prompt, LETTERS[shot.label]) for shot in shots]
        prompt, turns = fewshot_turns(pairs, example.prompt)
        choices = tuple(choice.lstrip(" ") for choice in example.choices) if chat else example.choices
        changed.append(replace(example, prompt=prompt, messages=turns if chat else (), choices=choices))
    return changed
