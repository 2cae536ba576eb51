"""The built-in batched evaluator: greedy generation with stop strings, and multiple choice by
log-likelihood, returning per-example correctness.

It follows lm-eval's HF backend request by request (same tokenization of context and
continuation, same greedy decoding, same cut at stop strings, same answer filters), so the
two backends agree on accuracy; it is faster because it runs each prompt once for all its
options, applies the LM head only where a score is read, and decodes continuously batched
(a finished row's place goes to the next prompt) on a KV cache written in place.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria
from transformers.cache_utils import Cache, DynamicLayer

from sae_merging.evaluation.settings import BuiltinSettings, EvaluatorSettings
from sae_merging.tasks.base import Example, TaskData, continuations, render_prompts
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


def stop_window(stops: Sequence[str]) -> int:
    """Tokens enough to hold the longest stop string: every token decodes to at least one byte,
    a character takes at most 4, and one more token may straddle the window's start."""
    return 4 * max((len(s) for s in stops), default=0) + 1


def stop_seen(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int], stops: Sequence[str]) -> bool:
    """Whether the text of `tokens` contains a stop string, decoding only the tail that a stop
    completed by the last token lies in (a full decode only confirms a hit), so a check costs
    the same at every step rather than growing with the text."""
    window = stop_window(stops)
    tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    if not any(stop in tail for stop in stops):
        return False
    if len(tokens) <= window:
        return True
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return any(stop in text for stop in stops)


class _StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once its new text contains any stop string (`generate`
    keeps a finished row finished, so the stop need only be seen once)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, tuple(stops), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_len :].tolist()
        done = [stop_seen(self.tokenizer, row, self.stops) for row in rows]
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
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    task: TaskData | None = None,
    prompts: Sequence[str] | None = None,
) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """(context, continuation) token ids of every option of every question, and the index of
    the question each belongs to: all options of a batch of questions scored in one pass.
    `prompts`: the rendered prompts (default: the examples' own); `task`: whose target
    delimiter goes before each choice (see `continuations`)."""
    requests, owners = [], []
    for index, example in enumerate(examples):
        prompt = example.prompt if prompts is None else prompts[index]
        for choice in example.choices if task is None else continuations(task, example):
            requests.append(encode_pair(tokenizer, prompt, choice))
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


class Evaluator(EvaluatorSettings):
    """What every evaluator backend shares: batch size, GSM8K answer filter, length limit,
    progress bars (`EvaluatorSettings`), and `evaluate(model, tokenizer, task, examples) ->
    TaskScores`. A backend derives from this and its own settings, and supplies `generate`
    (greedy continuations cut at stop strings) and `loglikelihoods` (summed log-probability of
    each continuation); scoring is the same for all."""

    name = "evaluator"

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: TaskData,
        examples: Sequence[Example],
    ) -> TaskScores:
        model.eval()
        if task.scorer is not None and task.scorer.unsupported:
            from sae_merging.evaluation.lm_eval_backend import evaluate_with_lm_eval

            return evaluate_with_lm_eval(self, model, tokenizer, task, examples)
        prompts = render_prompts(task, examples, tokenizer)
        if task.kind == "generate":
            outputs = self.generate(model, tokenizer, prompts, task)
            if task.scorer is None:
                correct = [is_correct(o, e.answer, self.extraction) for o, e in zip(outputs, examples)]
            else:
                correct = task.scorer.generations(examples, outputs)
        elif task.scorer is None:
            choices = self.choose(model, tokenizer, examples, task, prompts)
            outputs = [str(c) for c in choices]
            correct = [c == e.label for c, e in zip(choices, examples)]
        else:
            scores = self.choice_loglikelihoods(model, tokenizer, examples, task, prompts)
            outputs = [str(max(range(len(s)), key=lambda i, s=s: (s[i], -i))) for s in scores]
            correct = task.scorer.choices(examples, scores)
        return TaskScores(task.name, [e.uid for e in examples], correct, outputs)

    def choose(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        task: TaskData | None = None,
        prompts: Sequence[str] | None = None,
    ) -> list[int]:
        """Index of the most likely choice of each multiple-choice example."""
        requests, owners = choice_requests(tokenizer, examples, task, prompts)
        scores = self.loglikelihoods(model, tokenizer, requests)
        return best_choices(owners, scores, len(examples))

    def choice_loglikelihoods(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        task: TaskData,
        prompts: Sequence[str],
    ) -> list[list[float]]:
        """The log-likelihood of each choice of each example, in the examples' order."""
        requests, owners = choice_requests(tokenizer, examples, task, prompts)
        scores = self.loglikelihoods(model, tokenizer, requests)
        grouped: list[list[float]] = [[] for _ in examples]
        for owner, score in zip(owners, scores, strict=True):
            grouped[owner].append(score)
        return grouped

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


CPU_PREFILL_TOKENS = 1024  # padded tokens per pass over prompts on a CPU (BuiltinEvaluator)
REFILL = 0.25  # the share of a decoding batch done before waiting rows take their places
PADDING = 0.1  # the largest share of a batch's token slots left to padding
# Generation-config settings under which greedy decoding is a plain argmax of the logits; any
# other value (a repetition penalty, suppressed tokens, ...) is applied by `model.generate`.
PLAIN_GREEDY = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
}


def plain_greedy(model: PreTrainedModel) -> bool:
    """Whether the model's generation config leaves greedy decoding a plain argmax."""
    config = model.generation_config
    return all(getattr(config, key, None) in allowed for key, allowed in PLAIN_GREEDY.items())


def end_token_ids(model: PreTrainedModel) -> set[int]:
    """The ids that end a generation: the model's generation config's (instruct models list
    several, their tokenizer names one), as `model.generate` and lm-eval use them."""
    eos = model.generation_config.eos_token_id
    return set() if eos is None else {int(eos)} if isinstance(eos, int) else {int(i) for i in eos}


def budget_batches(
    lengths: Sequence[int], order: Sequence[int], token_budget: int, max_rows: int, padding: float = PADDING
) -> list[list[int]]:
    """Consecutive runs of `order` (longest first) whose padded size, rows x the longest
    row's length, stays within `token_budget` (a row longer than the budget goes alone), and
    whose padding stays within `padding` of that size (sorted rows of similar length share a
    batch; padding is computed for nothing)."""
    batches: list[list[int]] = []
    real = 0
    for index in order:
        if batches:
            batch = batches[-1]
            width = max(lengths[batch[0]], lengths[index])
            size = width * (len(batch) + 1)
            if (
                len(batch) < max_rows
                and size <= token_budget
                and real + lengths[index] >= (1 - padding) * size
            ):
                batch.append(index)
                real += lengths[index]
                continue
        batches.append([index])
        real = lengths[index]
    return batches


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix that every row shares."""
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


def shared_prefix_cache(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], min_tokens: int
) -> tuple[int, Cache | None]:
    """The number of leading tokens all `rows` share (an instruction header, a chat template's
    system prompt) and their KV cache from one pass as one row, when there are at least
    `min_tokens` of them and more than one row; (0, None) otherwise. Every row keeps at least
    its last token outside the prefix (its logits are what is scored)."""
    shared = min(common_prefix(rows), min(len(r) for r in rows) - 1)
    if len(rows) < 2 or shared < min_tokens:
        return 0, None
    prefix = torch.tensor([rows[0][:shared]], dtype=torch.long, device=model.device)
    return shared, model(input_ids=prefix, use_cache=True, **_keep(model, 1)).past_key_values


def repeated(cache: Cache, n: int) -> DynamicCache:
    """A copy of a one-row cache for `n` rows (the model extends a cache it is given in place)."""
    return DynamicCache([(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v, *_ in cache])


def last_logits(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int, prefix: Cache | None = None
) -> torch.Tensor:
    """The logits at each row's last token, `[rows, vocab]`, without an attention mask: rows are
    right-padded, and causal attention never looks to the right, so the padding changes nothing
    before it (lm-eval's HF backend lays its batches out so too). The LM head runs only at the
    rows' last positions (the distinct ones, at most one per row). `prefix`: the KV cache of
    tokens that precede every row (`shared_prefix_cache`), which each row then extends; without
    it no cache is built and the attention runs its fused causal kernel."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)] = torch.tensor(row, dtype=torch.long)
    ends = sorted({len(r) - 1 for r in rows})
    column = {end: k for k, end in enumerate(ends)}
    kwargs = _keep(model, torch.tensor(ends, device=model.device))
    if not kwargs:  # every position's logits, then the rows' last ones
        column = {end: end for end in ends}
    cache = None if prefix is None else repeated(prefix, len(rows))
    output = model(
        input_ids=input_ids.to(model.device), past_key_values=cache, use_cache=cache is not None, **kwargs
    )
    picked = torch.tensor([column[len(r) - 1] for r in rows], device=output.logits.device)
    return output.logits[torch.arange(len(rows), device=output.logits.device), picked]


def _keep(model: PreTrainedModel, positions: int | torch.Tensor) -> dict:
    """`logits_to_keep` for models whose forward takes it (the LM head only there), else nothing."""
    return (
        {"logits_to_keep": positions}
        if "logits_to_keep" in inspect.signature(model.forward).parameters
        else {}
    )


class _SlotLayer(DynamicLayer):
    """One layer's keys and values in a `_Slots` cache: buffers `[slots, heads, columns, dim]`
    allocated once, of which the model sees the columns `_Slots` points it to and writes the new
    column in place. (`DynamicLayer` concatenates the whole cache with the new column at every
    step of every layer: a fresh allocation and copy each time.)"""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.buffers = [keys, values]
        self.point(0, 0)

    def point(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.keys, self.values = (buffer[:, :, start:end] for buffer in self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        for buffer, states in zip(self.buffers, (key_states, value_states)):
            buffer[:, :, self.end : self.end + new] = states
        self.point(self.start, self.end + new)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buffers = [buffer[indices] for buffer in self.buffers]
        self.point(self.start, self.end)


class _Slots:
    """A decoding batch of a fixed number of rows (slots) over one KV cache allocated once:
    a prefilled row is copied into a free slot, right-aligned at the current column, and every
    step appends one column to every slot. A done slot attends only to its newest column until
    a waiting row takes it; `shrink` drops the idle slots (the tail, when no row waits).

    Columns: `[end - width, end)` are attended, `width` at most `widest` (a row's prompt plus its
    new tokens); `widest * 3 // 2` are held, so that moving the attended columns back to the
    start (`_rewind`) is needed at most every `widest // 2` steps."""

    def __init__(self, model: PreTrainedModel, slots: int, widest: int) -> None:
        self.model, self.device, self.widest = model, model.device, widest
        self.attention = torch.zeros(
            (slots, max(widest + 1, widest * 3 // 2)), dtype=torch.long, device=self.device
        )
        self.idle = torch.ones(slots, dtype=torch.bool, device=self.device)
        self.end = self.width = 0
        self.cache: DynamicCache | None = None
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def __len__(self) -> int:
        return len(self.attention)

    def place(self, slots: Sequence[int], part: _Batch) -> None:
        """Copy the rows of `part` (prefilled, their cache a plain one) into `slots`."""
        width = part.attention.shape[1]
        if width > self.widest:
            raise ValueError(f"a prefilled row of {width} columns does not fit widest={self.widest}")
        if self.cache is None:
            self.cache = DynamicCache()
            self.cache.layers = [
                _SlotLayer(
                    *(t.new_zeros((len(self), t.shape[1], self.attention.shape[1], t.shape[3])) for t in kv)
                )
                for *kv, _ in part.cache
            ]
        if self.end < width:  # the first rows, or a longer row than any before it
            self._rewind(width)
        rows = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        span = slice(self.end - width, self.end)
        self.attention[rows] = 0
        self.attention[rows, span] = part.attention
        self.idle[rows] = False
        for layer, (keys, values, *_) in zip(self.cache.layers, part.cache):
            layer.buffers[0][rows, :, span] = keys
            layer.buffers[1][rows, :, span] = values
        self.width = max(self.width, width)

    def release(self, slots: Sequence[int]) -> None:
        """Slots whose rows are done: from now on each attends only to its own newest column
        (a row with nothing to attend to would be all padding), and the leading columns that no
        slot attends to any more are dropped."""
        rows = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        self.attention[rows, : self.end] = 0
        self.idle[rows] = True
        used = self.attention[:, self.end - self.width : self.end].any(0).nonzero()
        self.width -= int(used[0]) if len(used) else self.width

    def shrink(self, keep: Sequence[int]) -> None:
        """Keep only these slots (in this order): a copy of their cache."""
        rows = torch.tensor(list(keep), dtype=torch.long, device=self.device)
        self.attention, self.idle = self.attention[rows], self.idle[rows]
        self.cache.batch_select_indices(rows)

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append one token per slot; the logits of the next, `[slots, vocab]`."""
        if self.end == self.attention.shape[1]:
            self._rewind(self.width)
        self.attention[self.idle, self.end - 1] = 0
        self.attention[:, self.end] = 1
        mask = self.attention[:, self.end - self.width : self.end + 1]
        positions = (mask.cumsum(-1) - 1)[:, -1:]
        for layer in self.cache.layers:
            layer.point(self.end - self.width, self.end)
        output = self.model(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            **({"logits_to_keep": 1} if self.keep_logits else {}),
        )
        self.end += 1
        self.width += 1
        return output.logits[:, -1]

    def _rewind(self, end: int) -> None:
        """Move the attended columns so that they end at column `end` (>= `width`)."""
        old = slice(self.end - self.width, self.end)
        new = slice(end - self.width, end)
        attention = self.attention[:, old].clone()
        self.attention.zero_()
        self.attention[:, new] = attention
        for layer in self.cache.layers if self.cache is not None else ():
            for buffer in layer.buffers:
                buffer[:, :, new] = buffer[:, :, old].clone()
        self.end = end


class _Batch:
    """Token rows on the model's device with a KV cache that grows as they are extended;
    positions follow the attention mask, so padding anywhere in a row is invisible to it."""

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model, self.pad_id, self.device = model, pad_id, model.device
        self.attention: torch.Tensor | None = None
        self.cache: Cache | None = None
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def extend(
        self,
        rows: Sequence[Sequence[int]],
        keep: int = 1,
        cache: bool = True,
        left: bool = True,
    ) -> torch.Tensor:
        """Append `rows` (one per batch row, padded to one width on the left, or on the right
        when `left` is false) and return the logits of the last `keep` positions (0: all)."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[j, span] = torch.tensor(row, dtype=torch.long)
            mask[j, span] = 1
        mask = mask.to(self.device)
        self.attention = mask if self.attention is None else torch.cat([self.attention, mask], dim=1)
        positions = (self.attention.cumsum(-1) - 1).clamp(min=0)[:, -width:]
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=self.attention,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=cache,
            **({"logits_to_keep": keep} if self.keep_logits else {}),
        )
        self.cache = output.past_key_values if cache else None
        logits = output.logits
        return logits[:, -keep:] if keep and logits.shape[1] > keep else logits

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (in this order, repeats allowed), cache included."""
        rows = rows.to(self.device)
        self.attention = self.attention[rows]
        if self.cache is not None:
            self.cache.batch_select_indices(rows)

    def branch(self, rows: torch.Tensor) -> _Batch:
        """A new batch of these rows over a copy of their cache (this one is left as it is)."""
        rows = rows.to(self.device)
        other = _Batch(self.model, self.pad_id)
        other.attention = self.attention[rows]
        other.cache = DynamicCache([(k[rows], v[rows]) for k, v, *_ in self.cache])
        return other


class BuiltinEvaluator(Evaluator, BuiltinSettings):
    """Scores examples of a task with a loaded model; see the module docstring.

    `token_budget` bounds the padded tokens of one forward pass (rows x width; for generation,
    rows x the longest prompt plus `max_new_tokens`, which is what the KV cache holds), so
    memory no longer grows with a fixed batch size times the longest prompt; `batch_size` still
    caps the rows. `prefill_tokens` bounds the padded tokens of a pass over prompts (a
    generation's prefill, a multiple-choice batch) further; None: `CPU_PREFILL_TOKENS` on a
    CPU (passes of about 1,000 tokens ran as fast as larger ones at 1 thread, and memory grows
    with the pass), `token_budget` elsewhere. `min_shared_prefix`: prompts that all start with at least
    this many equal tokens (a fixed few-shot context, a chat template's system prompt) run that
    prefix once and share its KV cache.
    """

    name = "builtin"

    def _prefill_tokens(self, model: PreTrainedModel) -> int:
        if self.prefill_tokens is not None:
            return self.prefill_tokens
        return CPU_PREFILL_TOKENS if model.device.type == "cpu" else self.token_budget

    def _max_length(self, model: PreTrainedModel) -> int:
        return self.max_length or getattr(model.config, "max_position_embeddings", 2048)

    @staticmethod
    def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

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
        max_context = self._max_length(model) - task.max_new_tokens
        encoded = [tokenizer(p)["input_ids"][-max_context:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), prompts[i]))
        results: list[str] = [""] * len(prompts)
        with tqdm(
            total=len(prompts), desc=f"generate {task.name}", disable=not self.progress, leave=False
        ) as bar:
            if plain_greedy(model):
                texts = self._decode_greedy(
                    model, tokenizer, [encoded[i] for i in order], task.max_new_tokens, stops, bar
                )
                batches = [order]
            else:
                lengths = [len(e) + task.max_new_tokens for e in encoded]
                batches = budget_batches(lengths, order, self.token_budget, self.batch_size)
                texts = []
                for batch in batches:
                    texts += self._decode_hf(
                        model, tokenizer, [encoded[i] for i in batch], task.max_new_tokens, stops
                    )
                    bar.update(len(batch))
        for i, text in zip((i for batch in batches for i in batch), texts, strict=True):
            results[i] = cut_at_stops(text, stops)
        return results

    def _decode_greedy(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        rows: Sequence[list[int]],
        max_new_tokens: int,
        stops: Sequence[str],
        bar: tqdm,
    ) -> list[str]:
        """Greedy decoding of `rows` with the KV cache, continuously batched: a row is done once
        it emits an end token, its text contains a stop string or it reaches `max_new_tokens`,
        and once a quarter of the batch is done (`REFILL`) the next waiting rows are prefilled
        (passes of at most `prefill_tokens`) and copied into the done rows' slots. So every
        decoding step runs a full batch, where batching whole requests runs each batch as long
        as its longest row (on a CPU a step costs nearly as much at 1 row as at 8: it reads
        every weight).

        Rows at a time: `batch_size`, and at most `token_budget` cached tokens, each row counted
        at the longest prompt plus `max_new_tokens` (the cache is as wide as its longest row).
        The prefix that every row shares (`min_shared_prefix` tokens or more) runs once."""
        if max_new_tokens < 1:
            return [""] * len(rows)
        widest = max(len(r) for r in rows) + max_new_tokens
        capacity = max(1, min(self.batch_size, len(rows), self.token_budget // widest))
        refill = max(1, round(capacity * REFILL))
        pad_id, ends = self._pad_id(tokenizer), end_token_ids(model)
        shared, prefix = shared_prefix_cache(model, rows, self.min_shared_prefix)
        rest = [len(row) - shared for row in rows]  # the tokens each row's prefill runs
        generated: list[list[int]] = [[] for _ in rows]
        slots = _Slots(model, capacity, widest)
        owners: list[int | None] = [None] * capacity  # slot j decodes rows[owners[j]]; None: idle
        waiting = 0  # rows[waiting:] have not started
        logits: torch.Tensor | None = None  # [slots, vocab]: each slot's next-token logits
        while True:
            free = [j for j, row in enumerate(owners) if row is None]
            if waiting < len(rows) and len(free) >= min(refill, len(rows) - waiting):
                joining = list(range(waiting, min(len(rows), waiting + len(free))))
                waiting += len(joining)
                places = iter(free)
                for chunk in budget_batches(rest, joining, self._prefill_tokens(model), len(joining)):
                    part = _Batch(model, pad_id)
                    if prefix is not None:
                        part.cache = repeated(prefix, len(chunk))
                        part.attention = torch.ones(
                            (len(chunk), shared), dtype=torch.long, device=model.device
                        )
                    first = part.extend([rows[i][shared:] for i in chunk], keep=1)[:, -1]
                    targets = [next(places) for _ in chunk]
                    slots.place(targets, part)
                    if logits is None:
                        logits = first.new_zeros((capacity, first.shape[-1]))
                    logits[targets] = first
                    for j, row in zip(targets, chunk):
                        owners[j] = row
            live = [j for j, row in enumerate(owners) if row is not None]
            if not live:
                break
            if waiting == len(rows) and len(live) <= len(owners) // 2:  # the tail: idle slots out
                slots.shrink(live)
                logits, owners = logits[live], [owners[j] for j in live]
            tokens = logits.argmax(-1).tolist()
            done = []
            for j, (row, token) in enumerate(zip(owners, tokens)):
                if row is None:
                    continue
                generated[row].append(token)  # an end token is kept, as generate keeps it
                if (
                    token in ends
                    or len(generated[row]) == max_new_tokens
                    or stop_seen(tokenizer, generated[row], stops)
                ):
                    owners[j] = None
                    done.append(j)
            if done:
                slots.release(done)
                bar.update(len(done))
            if all(row is None for row in owners):
                continue
            logits = slots.step([pad_id if row is None else generated[row][-1] for row in owners])
        return tokenizer.batch_decode(generated, skip_special_tokens=True)

    def _prefill(self, batch: _Batch, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run `rows` into an empty batch; the logits at each row's last position. A prefix of
        at least `min_shared_prefix` tokens that every row starts with runs once, its cache
        then copied to every row (a row keeps at least its last token to run)."""
        shared = min(common_prefix(rows), min(len(r) for r in rows) - 1)
        if len(rows) > 1 and shared >= self.min_shared_prefix:
            batch.extend([rows[0][:shared]], keep=1)
            batch.select(torch.zeros(len(rows), dtype=torch.long))
            return batch.extend([r[shared:] for r in rows], keep=1)
        return batch.extend(rows, keep=1)

    def _decode_hf(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        rows: Sequence[list[int]],
        max_new_tokens: int,
        stops: Sequence[str],
    ) -> list[str]:
        """One batch through `model.generate`, for generation configs that alter greedy decoding."""
        pad_id = self._pad_id(tokenizer)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, width - len(row) :] = torch.tensor(row)
            attention[j, width - len(row) :] = 1
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=[_StopOnStrings(tokenizer, stops, width)],
            pad_token_id=pad_id,
            use_cache=True,
        )
        return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    @torch.inference_mode()
    def loglikelihoods(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[tuple[list[int], list[int]]],
    ) -> list[float]:
        """Summed log-probability of each continuation given its context (token ids).

        The input of a request is lm-eval's, `(context + continuation)[:-1]` cut to the last
        `max_length` tokens; requests whose input up to the first continuation token is the same
        (the options of one question) share one pass over that prefix. The first continuation
        token is scored from the prefix's last position; the rest of a longer continuation runs
        on the prefix's KV cache. The LM head is applied only at scored positions. A batch whose
        options are all one token (lettered multiple choice) runs right-padded without an
        attention mask (`last_logits`), on the KV cache of the prefix that all such prompts
        share (an instruction header), which runs once for the whole call.
        """
        max_length = self._max_length(model)
        prefixes: dict[tuple[int, ...], list[int]] = {}
        for i, (context, continuation) in enumerate(requests):
            if not 1 <= len(continuation) <= max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens does not fit max_length={max_length}"
                )
            whole = (context + continuation)[-(max_length + 1) :][:-1]
            prefixes.setdefault(tuple(whole[: len(whole) - len(continuation) + 1]), []).append(i)
        keys = sorted(prefixes, key=lambda p: (-len(p), p))
        lengths = [len(p) + max(len(requests[i][1]) for i in prefixes[p]) - 1 for p in keys]
        budget = min(self.token_budget, self._prefill_tokens(model))
        batches = budget_batches(lengths, range(len(keys)), budget, self.batch_size)
        results = [0.0] * len(requests)
        pad_id = self._pad_id(tokenizer)
        one_token = [p for p in keys if all(len(requests[i][1]) == 1 for i in prefixes[p])]
        shared, prefix = (
            shared_prefix_cache(model, one_token, self.min_shared_prefix) if one_token else (0, None)
        )
        for batch in tqdm(batches, desc="loglikelihood", disable=not self.progress, leave=False):
            group = [keys[g] for g in batch]
            owners = [(j, i) for j, prefix in enumerate(group) for i in prefixes[prefix]]
            longer = [(j, i) for j, i in owners if len(requests[i][1]) > 1]
            state = _Batch(model, pad_id)
            if longer:  # the prompts' KV cache is kept for the longer continuations
                last = self._prefill(state, group)[:, -1]
            else:
                last = last_logits(model, [p[shared:] for p in group], pad_id, prefix)
            first = torch.log_softmax(last.float(), -1)
            for j, i in owners:
                results[i] = first[j, requests[i][1][0]].item()
            for start in range(0, len(longer), max(1, self.batch_size)):
                self._score_tails(state, requests, longer[start : start + self.batch_size], results)
        return results

    @staticmethod
    def _score_tails(state: _Batch, requests, owners: list[tuple[int, int]], results: list[float]) -> None:
        """Add the log-probabilities of continuation tokens 2.. to `results`: each continuation
        runs on a copy of its prefix's cache, right-padded (padding after the scored positions
        changes nothing before them)."""
        tails = [requests[i][1] for _, i in owners]
        branch = state.branch(torch.tensor([j for j, _ in owners], dtype=torch.long))
        logits = branch.extend([t[:-1] for t in tails], keep=0, cache=False, left=False)
        logprobs = torch.log_softmax(logits.float(), -1)
        for r, ((_, i), tail) in enumerate(zip(owners, tails)):
            picked = logprobs[r, torch.arange(len(tail) - 1), torch.tensor(tail[1:])]
            results[i] += picked.sum().item()
