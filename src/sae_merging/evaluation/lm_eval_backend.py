"""Scoring through lm-eval's own harness, the reference the built-in evaluator is held to.

Our examples are written as an lm-eval task (a YAML over a JSONL of the rendered prompts, in a
temporary folder) and run by `lm_eval.simple_evaluate` with its HF backend on the loaded model,
so tokenization, generation, stop strings, answer filters and metrics are all lm-eval's: the
`generate` metric is the `gsm8k` task's exact match with its two filters, `multiple_choice` is
`acc` over the example's choices. Per-example correctness comes back from lm-eval's logged
samples by document index.

`registered` maps a task of ours to one of lm-eval's registered tasks (`{gsm8k: gsm8k,
mmlu_prox: mmlu_prox_en}`); such a task is run instead of our examples, reading its data from
the hub (online users only), and the scores are its own documents' (`<subtask>/<doc_id>`), so
it serves as a `final_evaluator`, not for fitness (whose samples are our examples).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sae_merging.evaluation.builtin import BuiltinEvaluator, Evaluator, TaskScores
from sae_merging.evaluation.settings import LmEvalSettings
from sae_merging.tasks.base import (
    ChoiceScorer,
    Example,
    RegexScorer,
    TaskData,
    chat_prompt,
    continuations,
    render_prompts,
)
from sae_merging.tasks.extraction import FLEXIBLE_PATTERN, IGNORE_PATTERNS, STRICT_PATTERN
from sae_merging.tasks.lm_eval_task import LmEvalScorer

# lm-eval's gsm8k filter names for our extraction names.
FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}
QUIET_LOGGERS = ("lm_eval", "datasets")


@contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """lm-eval and datasets log every task load and draw a progress bar per stage, on every
    fitness evaluation: keep logs to errors, and datasets' bars off unless `progress`, for the
    duration of one evaluation, then restore the caller's settings. The model's bars are
    switched off through lm-eval's own `disable_tqdm` (see `_hflm`); nothing is patched."""
    import datasets

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    bars_were_off = datasets.are_progress_bars_disabled()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not progress:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _hflm(progress: bool, **kwargs):
    """lm-eval's HF backend whose request bars follow `progress` (lm-eval's evaluator calls
    `loglikelihood` / `generate_until` without its `disable_tqdm` switch)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not progress)

    return QuietHFLM(**kwargs)


def harness_model(evaluator: Evaluator, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
    """lm-eval's HF backend on the loaded model, with the evaluator's batch size and length limit."""
    return _hflm(
        evaluator.progress,
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",
        batch_size=evaluator.batch_size,
        max_length=evaluator.max_length,
    )


def task_config(task: TaskData, data_file: Path, cache_dir: Path, task_name: str) -> dict:
    """The lm-eval task config for our rendered examples of `task` (written to `data_file`):
    the GSM8K filters and metric, or the task's own extraction (`RegexScorer`) and
    multiple-choice metric (`ChoiceScorer`)."""
    config: dict = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1.0},
    }
    if task.kind == "generate":
        config.update(
            output_type="generate_until",
            doc_to_target="{{answer}}",
            generation_kwargs={
                "until": list(task.stop),
                "do_sample": False,
                "max_gen_toks": task.max_new_tokens,
            },
            metric_list=[
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": False,
                    "regexes_to_ignore": list(IGNORE_PATTERNS),
                }
            ],
            filter_list=[
                _regex_filter(FILTERS["strict"], STRICT_PATTERN.pattern),
                _regex_filter(FILTERS["flexible"], FLEXIBLE_PATTERN.pattern, group_select=-1),
            ],
        )
        if isinstance(task.scorer, RegexScorer):
            scorer = task.scorer
            config["metric_list"][0].update(
                ignore_case=scorer.ignore_case, regexes_to_ignore=list(scorer.regexes_to_ignore)
            )
            extract = _regex_filter("extract", scorer.pattern, scorer.group_select, scorer.fallback)
            config["filter_list"] = [extract]
    else:
        metric = task.scorer.metric if isinstance(task.scorer, ChoiceScorer) else "acc"
        config.update(
            output_type="multiple_choice",
            doc_to_choice="{{choices}}",
            doc_to_target="{{label}}",
            target_delimiter="",  # the rendered choices carry the task's delimiter
            metric_list=[{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
        )
    return config


def _regex_filter(
    name: str, pattern: str, group_select: int | None = None, fallback: str | None = None
) -> dict:
    regex = {"function": "regex", "regex_pattern": pattern}
    if group_select is not None:
        regex["group_select"] = group_select
    if fallback is not None:
        regex["fallback"] = fallback
    return {"name": name, "filter": [regex, {"function": "take_first"}]}


def write_task(folder: Path, task: TaskData, examples: Sequence[Example], tokenizer=None) -> str:
    """Write `examples` (their prompts rendered as the model sees them: chat template, target
    delimiter) and their task config into `folder`; returns the lm-eval task name."""
    task_name = "sae_merging_" + re.sub(r"\W", "_", task.name)
    data_file = folder / "examples.jsonl"
    fields = ("uid", "prompt", "answer") if task.kind == "generate" else ("uid", "prompt", "choices", "label")
    prompts = render_prompts(task, examples, tokenizer)
    rows = (
        {**e.to_json(), "prompt": prompt, "choices": continuations(task, e)}
        for e, prompt in zip(examples, prompts, strict=True)
    )
    lines = (json.dumps({f: row[f] for f in fields}, ensure_ascii=False) + "\n" for row in rows)
    data_file.write_text("".join(lines), encoding="utf-8")
    config = task_config(task, data_file, folder / "datasets-cache", task_name)
    (folder / f"{task_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return task_name


def _sample_output(sample: dict) -> str:
    """The raw generation, or the index of the most likely choice."""
    first = sample["resps"][0][0]
    if isinstance(first, str):
        return first
    scores = [float(response[0]) for response in sample["filtered_resps"]]
    return str(scores.index(max(scores)))


def _sample_correct(sample: dict) -> bool:
    metric = next(m for m in ("acc", "acc_norm", "acc_bytes", "exact_match") if m in sample)
    return float(sample[metric]) == 1.0


class LmEvalEvaluator(Evaluator, LmEvalSettings):
    """Same interface as BuiltinEvaluator; see the module docstring. The arguments are
    `LmEvalSettings` (`num_fewshot`: registered tasks only; None keeps the task's own)."""

    name = "lm_eval"

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: TaskData,
        examples: Sequence[Example],
    ) -> TaskScores:
        model.eval()
        if isinstance(task.scorer, LmEvalScorer):  # lm-eval's own task: its requests, its metric
            return evaluate_with_lm_eval(self, model, tokenizer, task, examples)
        with _quiet(self.progress), tempfile.TemporaryDirectory(prefix="sae-merging-lm-eval-") as tmp:
            lm = harness_model(self, model, tokenizer)
            if task.name in self.registered:
                return self._registered(lm, task.name, self.registered[task.name])
            task_name = write_task(Path(tmp), task, examples, tokenizer)
            samples = self._run(lm, task_name, include_path=tmp)
        wanted = "none" if task.kind != "generate" else "extract" if task.scorer else FILTERS[self.extraction]
        by_doc = {s["doc_id"]: s for s in samples[task_name] if s["filter"] == wanted}
        ordered = [by_doc[i] for i in range(len(examples))]
        return TaskScores(
            task.name,
            [e.uid for e in examples],
            [_sample_correct(s) for s in ordered],
            [_sample_output(s) for s in ordered],
        )

    def _run(
        self, lm, task_name: str, include_path: str | None = None, num_fewshot: int | None = None
    ) -> dict[str, list[dict]]:
        """lm-eval's logged samples of one task (or group) by subtask: only the tasks in
        `include_path` are indexed when it is given, lm-eval's registered ones otherwise."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_name],
            task_manager=TaskManager(include_path=include_path, include_defaults=include_path is None),
            num_fewshot=num_fewshot,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=None,  # leave the caller's random state alone
            numpy_random_seed=None,
            torch_random_seed=None,
        )
        return results["samples"]

    def _registered(self, lm, name: str, registered: str) -> TaskScores:
        """Per-document results of lm-eval's registered task (all its subtasks, in name order)."""
        samples = self._run(lm, registered, num_fewshot=self.num_fewshot)
        uids, correct, outputs = [], [], []
        for subtask in sorted(samples):
            filters = list(dict.fromkeys(s["filter"] for s in samples[subtask]))
            wanted = FILTERS[self.extraction] if FILTERS[self.extraction] in filters else filters[0]
            for sample in sorted(samples[subtask], key=lambda s: s["doc_id"]):
                if sample["filter"] == wanted:
                    uids.append(f"{subtask}/{sample['doc_id']}")
                    correct.append(_sample_correct(sample))
                    outputs.append(_sample_output(sample))
        return TaskScores(name, uids, correct, outputs)


SLOWER_NOTED: set[str] = set()  # tasks whose slower path was noted once already


def lm_eval_context(context, tokenizer, chat: bool):
    """A prompt as lm-eval built it at load time, rendered for this tokenizer: chat turns (JSON)
    through its chat template; one prompt per input for tasks with several."""
    if isinstance(context, list):
        return [lm_eval_context(c, tokenizer, chat) for c in context]
    return chat_prompt(tokenizer, json.loads(context)) if chat else context


def evaluate_with_lm_eval(evaluator: Evaluator, model, tokenizer, task: TaskData, examples) -> TaskScores:
    """An lm-eval task scored by lm-eval itself: the task builds each example's requests from
    the prompt it built at load time, lm-eval's HF backend answers them (each request type by
    its own method, each request `repeats` times), then the task's filters and metric score
    them. The built-in evaluator comes here for what it cannot score (noted once per task, as
    this path is slower)."""
    scorer: LmEvalScorer = task.scorer
    if isinstance(evaluator, BuiltinEvaluator) and task.name not in SLOWER_NOTED:
        SLOWER_NOTED.add(task.name)
        print(
            f"note: task {task.name}: {scorer.unsupported}, so lm-eval itself scores it "
            "(slower than the built-in evaluator)",
            file=sys.stderr,
        )
    model.eval()
    task_obj = scorer.task
    by_example = []
    with _quiet(evaluator.progress):
        lm = harness_model(evaluator, model, tokenizer)
        for example in examples:
            doc_id, doc = scorer.docs[example.uid]
            context = lm_eval_context(scorer.contexts[example.uid], tokenizer, scorer.chat_template)
            requests = task_obj.construct_requests(
                doc=doc,
                ctx=context,
                metadata=(task_obj.config.task, doc_id, task_obj.config.repeats),
                apply_chat_template=scorer.chat_template,
            )
            by_example.append(requests if isinstance(requests, list) else [requests])
        by_type: dict[str, list] = {}
        for instance in (i for requests in by_example for i in requests):
            by_type.setdefault(instance.request_type, []).extend([instance] * instance.repeats)
        for request_type, instances in by_type.items():
            for instance, response in zip(instances, getattr(lm, request_type)(instances), strict=True):
                instance.resps.append(response)
        correct = scorer.correct(examples, by_example)
    outputs = [str(requests[0].resps[0]) for requests in by_example]
    return TaskScores(task.name, [e.uid for e in examples], correct, outputs)
