"""Build the lab: a tokenizer, a tiny Llama base and two experts fine-tuned from it.

The base is "pretrained" on general data of both domains: one-step word problems, a few
two-step ones, English multiple-choice questions, and unanswered questions in every language
(vocabulary only). The math expert is then fine-tuned on two-step problems, the multilingual
expert on multiple choice in all five languages, both with a small learning rate and some
replay of the base's data, so they stay close to the base, as fine-tuned LLMs stay close to
theirs; their skills then interfere when merged, but can also be combined.

Everything is deterministic in the spec's seed and cached on disk under a hash of the spec:
a later run with the same spec reuses the build; concurrent runs wait for one builder.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from sae_merging.lab import math_problems, multilingual
from sae_merging.lab.spec import EXPERTS, MATH_TASK, MULTILINGUAL_TASK, LabSpec
from sae_merging.lab.tokenizer import build_tokenizer
from sae_merging.lab.training import encode, train
from sae_merging.tasks.base import SPLITS, Example, TaskData, read_jsonl, write_jsonl
from sae_merging.utils.files import atomic_directory, atomic_write_json
from sae_merging.utils.paths import remove_leftovers


@dataclass(frozen=True)
class LabBuild:
    """A finished build on disk."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def experts(self) -> dict[str, Path]:
        return {name: self.root / name for name in EXPERTS}

    def task_file(self, task: str, split: str) -> Path:
        return self.root / "tasks" / task / f"{split}.jsonl"

    @property
    def report(self) -> dict:
        return json.loads((self.root / "build.json").read_text())

    def tasks(self) -> list[TaskData]:
        """lab-math and lab-multilingual with their train / opt / test examples."""
        return [
            _task_data(
                name,
                info,
                {
                    split: [Example.from_json(row) for row in read_jsonl(self.task_file(name, split))]
                    for split in SPLITS
                },
            )
            for name, info in self.report["tasks"].items()
        ]


def _task_data(name: str, info: Mapping, splits: dict[str, list[Example]]) -> TaskData:
    return TaskData(name, info["kind"], splits, tuple(info["stop"]), info["max_new_tokens"])


def build_lab(spec: LabSpec, cache_dir: str | Path, progress: bool = True) -> LabBuild:
    """Return the cached build for `spec`, building it first if needed (and then printing
    every model's test scores).

    The build runs on `spec.threads` torch threads whatever the machine: CPU float sums are
    split by thread, so the same spec, torch version and thread count give bit-identical
    weights, and another thread count gives (slightly) different ones."""
    root = Path(cache_dir).expanduser() / f"{spec.name}-{spec.key()}"
    if (root / "build.json").is_file():
        return LabBuild(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / "build.json").is_file():
            remove_leftovers([root.parent], [root.name])  # of a killed build (no one else builds it now)
            threads = torch.get_num_threads()
            torch.set_num_threads(spec.threads)
            try:
                with atomic_directory(root) as tmp:
                    _build(spec, tmp, progress)
            finally:
                torch.set_num_threads(threads)
            print(f"lab '{spec.name}' built at {root}\n{report_table(LabBuild(root).report)}", flush=True)
    return LabBuild(root)


def report_table(report: Mapping) -> str:
    """The build's test accuracy per model and task (Markdown), and what it took."""
    tasks = list(next(iter(report["test_accuracy"].values())))
    lines = [
        "| model | " + " | ".join(tasks) + " | mean |",
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    for model, scores in report["test_accuracy"].items():
        values = [scores[t] for t in tasks]
        cells = " | ".join(f"{100 * v:.1f}" for v in values + [sum(values) / len(values)])
        lines.append(f"| {model} | {cells} |")
    seconds = ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items())
    sizes = ", ".join(f"{t} {n}" for t, n in report.get("test_examples", {}).items())
    lines.append("")
    lines.append(
        f"{report['parameters']:,} parameters, vocabulary {report['vocab_size']}; built in "
        f"{report['total_seconds']:.0f}s ({seconds}) with {report['torch_threads']} torch threads, "
        f"torch {report.get('torch_version', '?')}" + (f"; test items: {sizes}" if sizes else "") + "."
    )
    return "\n".join(lines)


def _model_config(spec: LabSpec, tokenizer) -> LlamaConfig:
    m = spec.model
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_attention_heads,
        max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=True,  # as Llama-3.2-1B/3B
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def lab_tasks_from_spec(spec: LabSpec) -> dict[str, dict[str, list[Example]]]:
    """Every example set of the lab, by task and split ('train' is the expert's data)."""
    ms, mls, seed = spec.math, spec.multilingual, spec.seed
    return {
        MATH_TASK: {
            "train": math_problems.generate(ms, "train", spec.math_expert.n_train, seed + 1),
            "opt": math_problems.generate(ms, "opt", ms.n_opt, seed, distinct=True),
            "test": math_problems.generate(ms, "test", ms.n_test, seed, distinct=True),
        },
        MULTILINGUAL_TASK: {
            "train": multilingual.generate_training(mls, spec.multilingual_expert.n_train, seed + 1),
            "opt": multilingual.generate(mls, "opt", mls.n_opt_items, seed),
            "test": multilingual.generate(mls, "test", mls.n_test_items, seed),
        },
    }


def _base_corpus(spec: LabSpec) -> tuple[list[Example], list[Example]]:
    """(answered, unanswered) examples the base is trained on."""
    ms, mls, data, seed = spec.math, spec.multilingual, spec.base_data, spec.seed
    answered = math_problems.generate(ms, "train", data.math_one_step, seed + 2, steps=(1,))
    answered += math_problems.generate(ms, "train", data.math_multi_step, seed + 3)
    answered += multilingual.generate_training(mls, data.multilingual_english, seed + 2, languages=("en",))
    unanswered = multilingual.generate_training(mls, data.multilingual_unanswered, seed + 3)
    return answered, unanswered


def _build(spec: LabSpec, out: Path, progress: bool) -> None:
    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.models.io import save_model_folder

    started = time.perf_counter()
    # one bar over all training steps (the bulk of the time), so its ETA is the build's
    steps = spec.base_train.steps + spec.math_expert.train.steps + spec.multilingual_expert.train.steps
    bar = tqdm(total=steps, desc=f"building lab '{spec.name}'", unit="step", disable=not progress)
    timings: dict[str, float] = {}

    def stage(name: str, begin: float) -> None:
        timings[name] = round(time.perf_counter() - begin, 2)

    bar.set_description_str(f"building lab '{spec.name}': data")
    begin = time.perf_counter()
    tasks = lab_tasks_from_spec(spec)
    answered, unanswered = _base_corpus(spec)
    vocabulary = math_problems.vocabulary_text(spec.math) + multilingual.vocabulary_text(spec.multilingual)
    tokenizer = build_tokenizer(vocabulary)
    _check_vocabulary(tokenizer, [e for splits in tasks.values() for part in splits.values() for e in part])
    task_info = {
        MATH_TASK: {"kind": "generate", "stop": list(math_problems.STOP), "max_new_tokens": 48},
        MULTILINGUAL_TASK: {"kind": "multiple_choice", "stop": [], "max_new_tokens": 0},
    }
    for name, splits in tasks.items():
        for split, examples in splits.items():
            write_jsonl(out / "tasks" / name / f"{split}.jsonl", examples)
    stage("data", begin)

    torch.manual_seed(spec.seed)
    config = _model_config(spec, tokenizer)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    models: dict[str, LlamaForCausalLM] = {}
    begin = time.perf_counter()
    base = LlamaForCausalLM(config)
    corpus = [encode(tokenizer, e.prompt, e.target, True) for e in answered]
    corpus += [encode(tokenizer, e.prompt, "", True) for e in unanswered]
    bar.set_description_str(f"building lab '{spec.name}': base")
    train(base, corpus, spec.base_train, spec.seed, tokenizer.pad_token_id, bar)
    models["base"] = base
    stage("base", begin)

    for offset, (name, task, expert) in enumerate(
        [
            ("math", MATH_TASK, spec.math_expert),
            ("multilingual", MULTILINGUAL_TASK, spec.multilingual_expert),
        ],
        start=1,
    ):
        begin = time.perf_counter()
        model = copy.deepcopy(base)
        data = [encode(tokenizer, e.prompt, e.target, False) for e in tasks[task]["train"]]
        n_replay = round(len(data) * expert.replay / (1 - expert.replay))
        replay = random.Random(f"replay/{name}/{spec.seed}").sample(answered, min(n_replay, len(answered)))
        data += [encode(tokenizer, e.prompt, e.target, False) for e in replay]
        bar.set_description_str(f"building lab '{spec.name}': {name} expert")
        train(model, data, expert.train, spec.seed + offset, tokenizer.pad_token_id, bar)
        models[name] = model
        stage(f"{name} expert", begin)

    begin = time.perf_counter()
    bar.set_description_str(f"building lab '{spec.name}': evaluation")
    for name, model in models.items():
        save_model_folder(out / name, model.state_dict(), config, tokenizer, generation)
    average = copy.deepcopy(base)
    experts_sd = [models[n].state_dict() for n in EXPERTS]
    average.load_state_dict({k: (experts_sd[0][k] + experts_sd[1][k]) / 2 for k in experts_sd[0]})
    models["average"] = average
    evaluator = BuiltinEvaluator(batch_size=128)
    task_data = [_task_data(name, task_info[name], splits) for name, splits in tasks.items()]
    accuracy = {
        name: {t.name: evaluator.evaluate(model, tokenizer, t, t.split("test")).accuracy for t in task_data}
        for name, model in models.items()
    }
    stage("evaluation", begin)
    bar.close()
    atomic_write_json(
        out / "build.json",
        {
            "name": spec.name,
            "key": spec.key(),
            "spec": asdict(spec),
            "parameters": sum(p.numel() for p in base.parameters()),
            "vocab_size": len(tokenizer),
            "seconds": timings,
            "total_seconds": round(time.perf_counter() - started, 2),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "test_accuracy": accuracy,
            "test_examples": {t.name: len(t.split("test")) for t in task_data},
            "tasks": task_info,
        },
    )


def _check_vocabulary(tokenizer, examples: list[Example]) -> None:
    """Every generated text must tokenize without unknown pieces and decode back exactly."""
    for example in examples:
        for text in [example.prompt + example.target, *(example.prompt + c for c in example.choices)]:
            ids = tokenizer(text)["input_ids"]
            if tokenizer.unk_token_id in ids or tokenizer.decode(ids, skip_special_tokens=True) != text:
                raise ValueError(f"the lab tokenizer does not cover {text!r}")
