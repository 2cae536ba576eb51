"""Scoring individuals on task samples, with a cache so nothing is scored twice.

One model object (built once from the reference config) is reused for every individual: its
weights are overwritten in place, which is far cheaper than building a model per evaluation.
Per-example correctness is cached by (individual id, example uid); individuals never change
after they are made, so a cached answer stays valid, and re-scoring an archive on a new
optimization draw only computes the examples it has not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from sae_merging.models.io import parse_dtype, tied_aliases
from sae_merging.tasks.base import Example, TaskData
from sae_merging.tasks.settings import AGGREGATES

# reads an individual's tensors, called only when some example is not cached yet
WeightsLoader = Callable[[], Mapping[str, torch.Tensor]]


def aggregate(per_task: Mapping[str, float], counts: Mapping[str, int], how: str = "task_mean") -> float:
    """One score from per-task values: their mean (`task_mean`, every task counts equally) or
    their mean weighted by item count (`instances`: paper eq. 3's sum over all N instances,
    divided by N so it stays in [0, 1] beside alpha * S; the argmax is the sum's)."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate={how!r}; valid: {', '.join(AGGREGATES)}")
    if not per_task:
        return 0.0
    if how == "task_mean":
        return sum(per_task.values()) / len(per_task)
    total = sum(counts[task] for task in per_task)
    return sum(per_task[task] * counts[task] for task in per_task) / total if total else 0.0


@dataclass
class Scores:
    """Per-task correctness of one individual on one sample."""

    correct: dict[str, list[bool]]

    def task_accuracy(self) -> dict[str, float]:
        return {task: sum(c) / len(c) if c else 0.0 for task, c in self.correct.items()}

    @property
    def mean(self) -> float:
        """The task score p: mean over tasks of the accuracy (each task counts equally)."""
        return self.value("task_mean")

    def value(self, how: str = "task_mean") -> float:
        """The task score p under `aggregate` `how` (task_mean | instances; the latter counted
        exactly: items solved / items)."""
        if how == "instances":
            total = sum(self.counts().values())
            return sum(sum(c) for c in self.correct.values()) / total if total else 0.0
        return aggregate(self.task_accuracy(), self.counts(), how)

    def counts(self) -> dict[str, int]:
        return {task: len(c) for task, c in self.correct.items()}

    def flat(self) -> list[bool]:
        """All examples' correctness, task after task (for fitness sharing)."""
        return [c for task in sorted(self.correct) for c in self.correct[task]]


@dataclass
class FitnessCounters:
    fitness_evaluations: int = 0  # (individual, sample) scorings requested, cached or not
    models_scored: int = 0  # requests that had to run the model (some example not cached yet)
    examples_scored: int = 0  # (individual, example) pairs actually computed: the fair budget


class FitnessEvaluator:
    """Scores individuals' tensors on task examples with a reusable model."""

    def __init__(
        self,
        evaluator,
        config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
    ) -> None:
        self.evaluator = evaluator
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype)).to(self.device).eval()
        self.aliases = set(tied_aliases(config))
        self.cache: dict[str, dict[str, bool]] = {}
        self.counters = FitnessCounters()
        self._loaded: str | None = None

    def load_weights(self, ident: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy an individual's tensors into the model, one at a time (a lazy mapping is read
        tensor by tensor, never held whole), in place, keeping tied weights tied: what
        `load_state_dict(strict=False)` does, without a dict of the whole model beside it."""
        if self._loaded == ident:
            return
        params = self.model.state_dict()  # the model's own tensors (no copy)
        names = list(tensors)
        missing = set(params) - set(names) - self.aliases
        unexpected = [name for name in names if name not in params]
        if missing or unexpected:
            raise ValueError(
                f"individual {ident!r} does not fit the model: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        self._loaded = None  # (a failed copy leaves no individual loaded)
        with torch.no_grad():
            for name in names:
                params[name].copy_(tensors[name])
        self._loaded = ident

    def score(
        self, ident: str, tensors: WeightsLoader, samples: Mapping[str, tuple[TaskData, Sequence[Example]]]
    ) -> Scores:
        """Correctness of individual `ident` on each task's sample; `tensors` is called only if
        some example is not cached yet (the budget is the loop's: it prices requests before
        making them, `runtime.loop`)."""
        self.counters.fitness_evaluations += 1
        known = self.cache.setdefault(ident, {})
        if any(e.uid not in known for _, examples in samples.values() for e in examples):
            self.counters.models_scored += 1
        for task, examples in samples.values():
            todo = [e for e in examples if e.uid not in known]
            if todo:
                if self._loaded != ident:  # read the individual once, not once per task
                    self.load_weights(ident, tensors())
                result = self.evaluator.evaluate(self.model, self.tokenizer, task, todo)
                known.update(zip(result.uids, result.correct, strict=True))
                self.counters.examples_scored += len(todo)
        return Scores({name: [known[e.uid] for e in examples] for name, (_, examples) in samples.items()})

    def uncached(self, ident: str, samples: Mapping[str, tuple[TaskData, Sequence[Example]]]) -> int:
        """How many examples scoring `ident` on `samples` would compute (the rest are cached)."""
        known = self.cache.get(ident, {})
        return sum(e.uid not in known for _, examples in samples.values() for e in examples)

    def forget(self, ident: str) -> None:
        """Drop the cache of an individual that left the archive."""
        self.cache.pop(ident, None)
        if self._loaded == ident:
            self._loaded = None

    def state(self) -> dict:
        return {"cache": self.cache, "counters": vars(self.counters).copy()}

    def restore(self, state: Mapping) -> None:
        self.cache = {ident: dict(results) for ident, results in state["cache"].items()}
        self.counters = FitnessCounters(**state["counters"])
        self._loaded = None
