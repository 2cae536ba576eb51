"""Any lm-eval task (registered, or a task YAML of one's own) as a fitness and test task.

lm-eval builds each document's prompt here, once, with its own code: `fewshot_context` with
the task's few-shot sampler seeded as `lm_eval --num_fewshot N` seeds it (1234, advanced over
the documents in order), the chat turns as `--apply_chat_template` makes them (few-shot
examples as turns). The test split is the task's evaluation split (its test split, else its
validation split), in lm-eval's order, so a test prompt is the one lm-eval builds for that
document; the optimization split is another split of its dataset (`opt_split`), whose
prompts draw their shots from a sampler seeded afresh.

The built-in evaluator scores `generate_until` tasks (greedy, cut at the task's `until`) and
`multiple_choice` tasks (log-likelihood of each choice); the scorer then runs the task's own
filters and `process_results`, so the metric is lm-eval's. What it cannot score (other request
types, sampling, several inputs, multiple-choice metrics other than acc/acc_norm/acc_bytes, a
task's own `process_results` on choices) lm-eval runs itself: its HF backend answers the
requests the task builds (see `evaluation.lm_eval_backend.evaluate_with_lm_eval`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_merging.tasks.base import CHOICE_METRICS, Example, Scorer, TaskData
from sae_merging.tasks.settings import LmEvalTaskSettings
from sae_merging.utils.settings import configured_by

GREEDY_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend's default


@dataclass(eq=False)
class LmEvalScorer(Scorer):
    """Scores through the lm-eval task itself: its filters (`filter`) and its per-document
    metric (`metric`, which must be 0 or 1 per document). `docs` and `contexts` (the prompt as
    lm-eval built it: a string, or chat turns as JSON) by example uid."""

    task: Any = None
    metric: str = "acc"
    filter: str = "none"
    chat_template: bool = False
    docs: dict[str, tuple[int, dict]] = field(default_factory=dict)
    contexts: dict[str, Any] = field(default_factory=dict)
    unsupported: str | None = None

    def generations(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[bool]:
        return self.score(examples, [[output] for output in outputs], "generate_until")

    def choices(self, examples: Sequence[Example], loglikelihoods: Sequence[Sequence[float]]) -> list[bool]:
        # is_greedy is not computed: none of the supported metrics reads it
        return self.score(examples, [[(ll, False) for ll in lls] for lls in loglikelihoods], "loglikelihood")

    def score(self, examples: Sequence[Example], responses: Sequence[list], request_type: str) -> list[bool]:
        """Per-example correctness from each example's responses (one per request)."""
        from lm_eval.api.instance import Instance

        by_example = []
        for example, resps in zip(examples, responses, strict=True):
            doc_id, doc = self.docs[example.uid]
            instances = []
            for idx, resp in enumerate(resps):
                instance = Instance(request_type, doc, ("", {}), idx, (self.task.config.task, doc_id, 1))
                instance.resps = [resp]
                instances.append(instance)
            by_example.append(instances)
        return self.correct(examples, by_example)

    def correct(self, examples: Sequence[Example], by_example: Sequence[list]) -> list[bool]:
        """Run the task's filters over answered instances, then its `process_results`."""
        flat = [instance for instances in by_example for instance in instances]
        for ensemble in getattr(self.task, "_filters", []):
            if ensemble.name == self.filter:
                ensemble.apply(flat)
        results = []
        for example, instances in zip(examples, by_example, strict=True):
            _, doc = self.docs[example.uid]
            metrics = self.task.process_results(doc, [i.filtered_resps[self.filter] for i in instances])
            results.append(per_item(metrics, self.metric, self.task.config.task))
        return results


def per_item(metrics: dict, metric: str, task: str) -> bool:
    """A document's metric as correct or not; SAE's fitness counts items solved."""
    if metric not in metrics:
        raise ValueError(f"lm-eval task {task!r} gives no metric {metric!r}; it gives {sorted(metrics)}")
    value = metrics[metric]
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(
        f"lm-eval task {task!r}: metric {metric!r} is {value!r} for a document; fitness needs a "
        "metric that is 0 or 1 per document (exact_match, acc, ...): set task.metric"
    )


def task_manager(task: str, include_path: str | None):
    """lm-eval's TaskManager and what to load with it: a .yaml path is loaded as a file, and
    nothing is indexed (lm-eval's registered tasks take seconds; the file's folder may hold
    other YAML); otherwise `include_path` is searched besides the registered tasks."""
    from lm_eval.tasks import TaskManager

    path = Path(task).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return TaskManager(include_defaults=False), str(path.resolve())
    if include_path is not None:
        return TaskManager(include_path=str(Path(include_path).expanduser())), task
    return TaskManager(), task


def unsupported_reason(task_obj, metric: str) -> str | None:
    """Why the built-in evaluator cannot score this task (None: it can)."""
    config = task_obj.config
    kind = task_obj.OUTPUT_TYPE
    if kind not in ("generate_until", "multiple_choice"):
        return f"its requests are {kind}"
    if task_obj.multiple_input:
        return "its documents have several inputs"
    if config.gen_prefix:
        return "it has a gen_prefix"
    if (config.repeats or 1) > 1:
        return f"it answers each request {config.repeats} times"
    if kind == "generate_until":
        kwargs = generation_kwargs(task_obj)
        if kwargs["do_sample"] or set(kwargs) - GREEDY_KEYS:
            return f"it generates with {kwargs} (the built-in evaluator decodes greedily)"
        return None
    if callable(config.process_results):
        return "it scores choices with a process_results of its own"
    if metric not in CHOICE_METRICS or "acc_mutual_info" in task_obj._metric_fn_list:
        return f"its metric {metric!r} is none of {', '.join(CHOICE_METRICS)}"
    if task_obj.multiple_target:
        return "its documents have several gold choices"
    return None


def generation_kwargs(task_obj) -> dict:
    """The task's generation settings as lm-eval's HF backend reads them (`until` a list,
    `max_gen_toks` from any of its aliases, `do_sample` and `temperature` made consistent)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    return dict(normalize_gen_kwargs(dict(task_obj.config.generation_kwargs or {}), DEFAULT_MAX_GEN_TOKS))


def split_docs(task_obj, split: str) -> list[dict]:
    """A split of the task's dataset, through its `process_docs` where it has one."""
    dataset = task_obj.dataset
    if split not in dataset:
        raise ValueError(
            f"lm-eval task {task_obj.config.task!r} has no split {split!r}; its dataset has {sorted(dataset)}"
        )
    process = task_obj.config.process_docs
    return list(process(dataset[split]) if process is not None else dataset[split])


def default_opt_split(task_obj) -> str:
    """The task's training split, else its validation split when it is not the one tested."""
    config = task_obj.config
    eval_split = config.test_split or config.validation_split
    for split in (config.training_split, config.validation_split):
        if split and split != eval_split:
            return split
    raise ValueError(
        f"lm-eval task {config.task!r} has only its evaluation split ({eval_split!r}); set "
        "task.opt_split to another split of its dataset (a local YAML: add training_split)"
    )


def _record(history, add_generation_prompt: bool = True) -> str:
    """A `chat_template` for lm-eval that keeps the chat turns (as JSON) instead of rendering
    them: the tokenizer renders them at evaluation time."""
    return json.dumps([[m["role"], m["content"]] for m in history])


def build_contexts(
    task_obj, docs: Sequence[dict], num_fewshot: int, seed: int, chat: bool, exclude_self: bool = False
) -> list:
    """Each document's prompt as lm-eval builds it, the sampler seeded afresh. `exclude_self`:
    the shots never include the document itself (lm-eval excludes it only where the few-shot
    split is the tested one; the optimization split is usually the few-shot source too)."""
    task_obj.set_fewshot_seed(seed=seed)
    sampler = getattr(task_obj, "sampler", None)
    sample = getattr(sampler, "sample", None)
    contexts = []
    try:
        for doc in docs:
            if exclude_self and sampler is not None:
                sampler.sample = lambda n, eval_doc=None, _doc=doc, **kwargs: sample(
                    n, eval_doc=_doc, **kwargs
                )
            contexts.append(
                task_obj.fewshot_context(
                    doc,
                    num_fewshot=num_fewshot,
                    apply_chat_template=chat,
                    fewshot_as_multiturn=True,
                    chat_template=_record if chat else None,
                    gen_prefix=task_obj.doc_to_prefix(doc),
                )
            )
    finally:
        if sampler is not None:
            sampler.__dict__.pop("sample", None)
    return contexts


def to_example(task_obj, uid: str, doc: dict, context: Any, chat: bool) -> Example:
    """An Example of a document whose requests the built-in evaluator can answer."""
    if not isinstance(context, str):  # several inputs: lm-eval answers its requests
        return Example(uid=uid, prompt="")
    messages = tuple(tuple(m) for m in json.loads(context)) if chat else ()
    prompt = messages[-1][1] if chat else context
    if task_obj.OUTPUT_TYPE == "multiple_choice":
        choices = tuple(task_obj.doc_to_choice(doc))
        gold = task_obj.doc_to_target(doc)
        label = choices.index(gold) if isinstance(gold, str) and gold in choices else gold
        label = label if isinstance(label, int) else -1
        return Example(uid=uid, prompt=prompt, choices=choices, label=label, messages=messages)
    target = task_obj.doc_to_target(doc)
    return Example(uid=uid, prompt=prompt, answer=str(target), messages=messages)


@configured_by(LmEvalTaskSettings)
def load_lm_eval_task(settings: LmEvalTaskSettings) -> TaskData:
    """lm-eval's task `task` (a registered name, a name found under `include_path`, or a task
    .yaml file, whose folder is not searched) as a TaskData; see the module docstring.
    `metric` / `filter`: which of the task's metrics and filters make an item correct (default:
    its first of each). Called with `LmEvalTaskSettings`' arguments."""
    task, include_path, num_fewshot = settings.task, settings.include_path, settings.num_fewshot
    metric, filter, chat_template = settings.metric, settings.filter, settings.chat_template
    import datasets
    from lm_eval.tasks import get_task_dict

    for logger in ("lm_eval", "datasets"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    manager, task_name = task_manager(task, include_path)
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        loaded = get_task_dict([task_name], manager)
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    if len(loaded) != 1 or not hasattr(next(iter(loaded.values())), "fewshot_context"):
        raise ValueError(f"lm-eval task {task!r} is a group; name one of its tasks")
    task_name, task_obj = next(iter(loaded.items()))
    shots = num_fewshot if num_fewshot is not None else task_obj.get_config("num_fewshot") or 0
    task_obj.set_config(key="num_fewshot", value=shots)
    metric = metric or next(iter(task_obj._metric_fn_list))
    filters = [ensemble.name for ensemble in getattr(task_obj, "_filters", [])] or ["none"]
    filter = filter or filters[0]
    if filter not in filters:
        raise ValueError(f"lm-eval task {task_name!r} has no filter {filter!r}; its filters: {filters}")
    name = settings.name or task_name
    scorer = LmEvalScorer(task_obj, metric, filter, chat_template)
    scorer.unsupported = unsupported_reason(task_obj, metric)
    splits: dict[str, list[Example]] = {"train": []}
    opt_docs = split_docs(task_obj, settings.opt_split or default_opt_split(task_obj))
    for split, docs in (("test", list(task_obj.eval_docs)), ("opt", opt_docs)):
        contexts = build_contexts(task_obj, docs, shots, settings.fewshot_seed, chat_template, split == "opt")
        splits[split] = []
        for doc_id, (doc, context) in enumerate(zip(docs, contexts, strict=True)):
            uid = f"{name}/{split}/{doc_id}"
            scorer.docs[uid] = (doc_id, doc)
            scorer.contexts[uid] = context
            splits[split].append(to_example(task_obj, uid, doc, context, chat_template))
    kind = "multiple_choice" if task_obj.OUTPUT_TYPE == "multiple_choice" else "generate"
    kwargs = generation_kwargs(task_obj) if kind == "generate" else {"until": [], "max_gen_toks": 0}
    stop, max_new_tokens = tuple(kwargs["until"]), kwargs["max_gen_toks"]
    metadata = {"lm_eval_task": task_name, "num_fewshot": shots, "metric": metric, "filter": filter}
    return TaskData(
        name,
        kind,
        splits,
        stop,
        max_new_tokens,
        metadata,
        chat_template=chat_template,
        target_delimiter=task_obj.config.target_delimiter,
        scorer=scorer,
    )
