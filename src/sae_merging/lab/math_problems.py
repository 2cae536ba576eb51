"""lab-math: GSM8K-style word problems with a short worked answer ending `#### N`.

A problem starts from a quantity and applies `steps` additions or subtractions of small
numbers, each told as a sentence. The worked answer writes one equation per step, as GSM8K's
answers do. Which split a problem belongs to depends only on its arithmetic (start, operations,
amounts), so the test set holds calculations never seen in training, whatever names and
objects dress them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sae_merging.lab.splits import split_of
from sae_merging.tasks.base import Example

NAMES = ("Tom", "Anna", "Ben", "Sara", "Leo", "Mia", "Sam", "Emma", "Max", "Lily", "Jack", "Zoe")
PRONOUNS = {
    "Tom": "He", "Ben": "He", "Leo": "He", "Sam": "He", "Max": "He", "Jack": "He",
    "Anna": "She", "Sara": "She", "Mia": "She", "Emma": "She", "Lily": "She", "Zoe": "She",
}  # fmt: skip
ITEMS = ("apples", "pens", "books", "cards", "coins", "eggs", "shells", "stamps", "cookies", "toys")
GAIN_VERBS = ("buys {n} more", "finds {n} more", "gets {n} more", "wins {n} more")
LOSS_VERBS = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}")

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
STOP = ("Question:", "\n\n")


@dataclass(frozen=True)
class MathSpec:
    """Sizes of lab-math. Operands are drawn from 1..max_operand."""

    max_operand: int = 9
    steps: tuple[int, ...] = (3,)
    n_opt: int = 1000
    n_test: int = 2000


def _arithmetic(rng: random.Random, n_steps: int, max_operand: int) -> tuple[int, tuple]:
    start = rng.randint(1, max_operand)
    value, ops = start, []
    for _ in range(n_steps):
        amount = rng.randint(1, max_operand)
        sign = "-" if value >= amount and rng.random() < 0.5 else "+"
        value = value + amount if sign == "+" else value - amount
        ops.append((sign, amount))
    return start, tuple(ops)


def render(start: int, ops: tuple, rng: random.Random, uid: str) -> Example:
    """Dress an arithmetic chain as a word problem with its worked answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pronoun = PRONOUNS[name]
    sentences = [f"{name} has {start} {item}."]
    equations, value = [], start
    for i, (sign, amount) in enumerate(ops):
        verb = rng.choice(GAIN_VERBS if sign == "+" else LOSS_VERBS).format(n=amount)
        sentences.append(f"{'Then ' + pronoun.lower() if i else pronoun} {verb}.")
        new_value = value + amount if sign == "+" else value - amount
        equations.append(f"{value} {sign} {amount} = {new_value}.")
        value = new_value
    sentences.append(f"How many {item} does {name} have now?")
    question = " ".join(sentences)
    return Example(
        uid=uid,
        prompt=PROMPT_TEMPLATE.format(question=question),
        target=" " + " ".join(equations) + f" #### {value}",
        answer=str(value),
        group=f"{len(ops)}-step",
    )


def generate(
    spec: MathSpec,
    split: str,
    n: int,
    seed: int,
    steps: tuple[int, ...] | None = None,
    distinct: bool = False,
) -> list[Example]:
    """`n` problems of `split` ('train', 'opt' or 'test') with a number of steps drawn from
    `steps` (default: the task's), deterministic in `seed`. With `distinct`, no two problems
    share their arithmetic (an evaluation set's items are then independent calculations, not
    one calculation in several dressings)."""
    steps = steps or spec.steps
    rng = random.Random(f"lab-math/{split}/{seed}/{steps}")
    examples: list[Example] = []
    seen: set[tuple] = set()
    misses = 0
    while len(examples) < n:
        start, ops = _arithmetic(rng, rng.choice(steps), spec.max_operand)
        if split_of(("math", start, ops)) != split or (distinct and (start, ops) in seen):
            misses += 1
            if misses > 1000 * max(n, 1):
                raise ValueError(
                    f"lab-math {split}: only {len(examples)} distinct problems of {n} found; "
                    "lower the size or raise math.max_operand / math.steps"
                )
            continue
        seen.add((start, ops))
        examples.append(render(start, ops, rng, uid=f"lab-math/{split}/{len(examples)}"))
    return examples


def vocabulary_text(spec: MathSpec) -> list[str]:
    """Text covering every word lab-math can produce (for the tokenizer)."""
    texts = [PROMPT_TEMPLATE, *STOP, " ".join(NAMES), " ".join(ITEMS), " ".join(PRONOUNS.values())]
    texts += [verb.format(n=0) for verb in GAIN_VERBS + LOSS_VERBS]
    texts += ["has Then then he she How many does have now? + - = . #### 0 1 2 3 4 5 6 7 8 9"]
    return texts
