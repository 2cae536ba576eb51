"""GSM8K, rendered exactly as lm-eval's `gsm8k` task renders it.

The optimization split is GSM8K's train set and the test split its test set; nothing is
trained on here (the experts come fine-tuned). A prompt is `Question: ...\\nAnswer:`, preceded
by `num_fewshot` worked train examples drawn as lm-eval's default sampler draws them: one
`random.Random(fewshot_seed)` advanced over the questions in order, so an n-shot test prompt is
the one `lm_eval --num_fewshot n` builds for the same question (its default seed is 1234).
"""

from __future__ import annotations

from collections.abc import Sequence

from sae_merging.tasks.base import Example, TaskData, draw_shots, fewshot_turns, load_rows
from sae_merging.tasks.extraction import normalize
from sae_merging.tasks.settings import Gsm8kSettings
from sae_merging.utils.settings import configured_by

PROMPT = "Question: {question}\nAnswer:"
STOP = ("Question:", "</s>", "<|im_end|>")


def render_turns(question: str, shots: Sequence[dict]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """lm-eval's context, plain text and chat turns: each shot is its question prompt, a space
    and its full answer, then a blank line (as turns: a user and an assistant turn); the target
    question's prompt comes last."""
    pairs = [(PROMPT.format(question=shot["question"]), shot["answer"]) for shot in shots]
    return fewshot_turns(pairs, PROMPT.format(question=question))


def render_prompt(question: str, shots: Sequence[dict]) -> str:
    """lm-eval's plain-text context (see `render_turns`)."""
    return render_turns(question, shots)[0]


def draw_fewshot(
    rows: Sequence[dict], pool: Sequence[dict], n: int, seed: int, same_split: bool
) -> list[list[dict]]:
    """Shots for each row, as lm-eval's sampler draws them (`same_split`: the rows come from the
    pool, so one extra is drawn and the row itself dropped). A shot never repeats the row's
    question; should a draw contain it anyway, that row's shots are redrawn without it."""
    return draw_shots(rows, pool, n, seed, same_split, key=lambda row: row["question"])


@configured_by(Gsm8kSettings)
def load_gsm8k(settings: Gsm8kSettings) -> TaskData:
    """GSM8K from `source`: a folder holding train.jsonl and test.jsonl (fields `question`,
    `answer`), or a hub id (config `main`; needs the hub). `test_source` reads the test split
    from elsewhere (then `source` may be a single train .jsonl file). `chat_template`: prompts
    through the model's chat template, shots as turns (`lm_eval --apply_chat_template`). Called
    with `Gsm8kSettings`' arguments."""
    source, test_source, name = settings.source, settings.test_source, settings.name
    num_fewshot, chat_template = settings.num_fewshot, settings.chat_template
    rows = load_rows({"train": source, "test": test_source or source}, config_name="main")
    pool = rows["train"]
    splits: dict[str, list[Example]] = {"train": []}
    for split, docs in (("opt", pool), ("test", rows["test"])):
        shots = draw_fewshot(docs, pool, num_fewshot, settings.fewshot_seed, same_split=docs is pool)
        splits[split] = []
        for i, (doc, doc_shots) in enumerate(zip(docs, shots)):
            prompt, turns = render_turns(doc["question"], doc_shots)
            splits[split].append(
                Example(
                    uid=f"{name}/{split}/{i}",
                    prompt=prompt,
                    target=" " + doc["answer"],
                    answer=normalize(doc["answer"]),
                    messages=turns if chat_template else (),
                )
            )
    metadata = {"source": source, "test_source": test_source, "num_fewshot": num_fewshot}
    return TaskData(
        name, "generate", splits, STOP, settings.max_new_tokens, metadata, chat_template=chat_template
    )
