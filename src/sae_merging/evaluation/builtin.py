"""The built-in batched evaluator: greedy generation with stop strings, and multiple choice by
log-likelihood, returning per-example correctness.

It follows lm-eval's HF backend request by request (same tokenization of context and
continuation, same greedy decoding, same cut at stop strings, same answer filters), so the
two backends agree on accuracy; it is faster because it batches by length, stops each
sequence as soon as it hits a stop string, and scores every option of a question together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from sae_merging.evaluation.settings import EvaluatorSettings
from sae_merging.tasks.base import Example, TaskData
from sae_merging.tasks.extraction import is_correct


@dataclass
class TaskScores:
    """Per-example results of one model on one task, in the order of the examples given."""

    task: str
    uids: list[str]
    correct: list[bool]
    outputs: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0


class _StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once its new text contains any stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, tuple(stops), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :])
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, device=input_ids.device)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    for stop in stops:
        text = text.split(stop)[0]
    return text


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """lm-eval's split of a (context, continuation) pair into token ids: trailing spaces move
    to the continuation, the whole string is encoded once and split at the context's length."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def choice_requests(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """(context, continuation) token ids of every option of every question, and the index of
    the question each belongs to: all options of a batch of questions scored in one pass."""
    requests, owners = [], []
    for index, example in enumerate(examples):
        for choice in example.choices:
            requests.append(encode_pair(tokenizer, example.prompt, choice))
            owners.append(index)
    return requests, owners


def best_choices(owners: Sequence[int], scores: Sequence[float], n: int) -> list[int]:
    """Per question, the position of its highest-scoring option (the first on a tie)."""
    best: list[tuple[float, int]] = [(-float("inf"), -1)] * n
    counters = [0] * n
    for owner, score in zip(owners, scores, strict=True):
        position, counters[owner] = counters[owner], counters[owner] + 1
        if score > best[owner][0]:
            best[owner] = (score, position)
    return [position for _, position in best]


class Evaluator:
    """What every evaluator backend shares: batch size, GSM8K answer filter, length limit,
    progress bars, and `evaluate(model, tokenizer, task, examples) -> TaskScores`. A backend
    supplies `generate` (greedy continuations cut at stop strings) and `loglikelihoods`
    (summed log-probability of each continuation); scoring is the same for all."""

    name = "evaluator"

    def __init__(
        self,
        batch_size: int = 64,
        extraction: str = "strict",
        max_length: int | None = None,
        progress: bool = False,
    ) -> None:
        EvaluatorSettings(batch_size, extraction, max_length, progress)  # checks
        self.batch_size = batch_size
        self.extraction = extraction
        self.max_length = max_length
        self.progress = progress

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: TaskData,
        examples: Sequence[Example],
    ) -> TaskScores:
        model.eval()
        if task.kind == "generate":
            outputs = self.generate(model, tokenizer, [e.prompt for e in examples], task)
            correct = [is_correct(o, e.answer, self.extraction) for o, e in zip(outputs, examples)]
        else:
            choices = self.choose(model, tokenizer, examples)
            outputs = [str(c) for c in choices]
            correct = [c == e.label for c, e in zip(choices, examples)]
        return TaskScores(task.name, [e.uid for e in examples], correct, outputs)

    def choose(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
    ) -> list[int]:
        """Index of the most likely choice of each multiple-choice example."""
        requests, owners = choice_requests(tokenizer, examples)
        scores = self.loglikelihoods(model, tokenizer, requests)
        return best_choices(owners, scores, len(examples))

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        task: TaskData,
    ) -> list[str]:
        raise NotImplementedError

    def loglikelihoods(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[tuple[list[int], list[int]]],
    ) -> list[float]:
        raise NotImplementedError


class BuiltinEvaluator(Evaluator):
    """Scores examples of a task with a loaded model; see the module docstring."""

    name = "builtin"

    def _max_length(self, model: PreTrainedModel) -> int:
        return self.max_length or getattr(model.config, "max_position_embeddings", 2048)

    @torch.inference_mode()
    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        task: TaskData,
    ) -> list[str]:
        """Greedy continuations of `prompts`, cut at the task's stop strings."""
        stops = tuple(task.stop) + ((tokenizer.eos_token,) if tokenizer.eos_token else ())
        encoded = [tokenizer(p)["input_ids"] for p in prompts]
        max_context = self._max_length(model) - task.max_new_tokens
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), prompts[i]))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        results: list[str] = [""] * len(prompts)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=f"generate {task.name}", disable=not self.progress, leave=False):
            rows = [encoded[i][-max_context:] for i in batch]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for j, row in enumerate(rows):
                input_ids[j, width - len(row) :] = torch.tensor(row)
                attention[j, width - len(row) :] = 1
            # End tokens come from the model's generation config, as in lm-eval (instruct models
            # list several; the tokenizer names only one).
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=task.max_new_tokens,
                do_sample=False,
                stopping_criteria=[_StopOnStrings(tokenizer, stops, width)],
                pad_token_id=pad_id,
                use_cache=True,
            )
            texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                results[i] = cut_at_stops(text, stops)
        return results

    @torch.inference_mode()
    def loglikelihoods(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[tuple[list[int], list[int]]],
    ) -> list[float]:
        """Summed log-probability of each continuation given its context (token ids)."""
        max_length = self._max_length(model)
        order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
        results = [0.0] * len(requests)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="loglikelihood", disable=not self.progress, leave=False):
            inputs = [(requests[i][0] + requests[i][1])[-(max_length + 1) :][:-1] for i in batch]
            width = max(len(x) for x in inputs)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for j, row in enumerate(inputs):
                input_ids[j, : len(row)] = torch.tensor(row)
                attention[j, : len(row)] = 1
            logits = model(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)
            ).logits
            for j, i in enumerate(batch):
                # log-softmax of the continuation's positions only, in float32: a batch's full
                # float32 log-probabilities would take gigabytes at a 128k vocabulary
                continuation = requests[i][1]
                end = len(inputs[j])
                rows = torch.log_softmax(logits[j, end - len(continuation) : end].float(), dim=-1)
                targets = torch.tensor(continuation, device=rows.device)
                results[i] = rows[torch.arange(len(continuation), device=rows.device), targets].sum().item()
        return results
