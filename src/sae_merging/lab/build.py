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
from sae_merging.tasks.base import (
    SPLITS,
    Example,
    TaskData,
    mean_percent,
    read_jsonl,
    validation_examples,
    write_jsonl,
)
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
                    _build(spec, tmp, progress, Path(cache_dir).expanduser())
            finally:
                torch.set_num_threads(threads)
            print(f"lab '{spec.name}' built at {root}\n{report_table(LabBuild(root).report)}", flush=True)
    return LabBuild(root)


def report_table(report: Mapping) -> str:
    """The build's test accuracy per model and task (Markdown), each row's kept share of the
    experts' gains, task arithmetic's lambda, and what the build took."""
    tasks = list(next(iter(report["test_accuracy"].values())))
    gains = report.get("normalized_gain", {})
    lines = [
        "| model | " + " | ".join(tasks) + " | mean | " + " | ".join(f"kept gain {t}" for t in tasks) + " |",
        "|---|" + "---:|" * (2 * len(tasks) + 1),
    ]
    for model, scores in report["test_accuracy"].items():
        cells = " | ".join(f"{100 * scores[t]:.1f}" for t in tasks) + f" | {mean_percent(scores):.1f}"
        kept = " | ".join(
            "n/a" if gains.get(model, {}).get(t) is None else f"{gains[model][t]:.2f}" for t in tasks
        )
        label = model
        if model == "task_arithmetic":
            label += f" (lambda {report['task_arithmetic']['lambda']})"
        lines.append(f"| {label} | {cells} | {kept} |")
    seconds = ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items())
    sizes = ", ".join(f"{t} {n}" for t, n in report.get("test_examples", {}).items())
    reused = report.get("reused_stages")
    lines.append("")
    lines.append(
        f"{report['parameters']:,} parameters, vocabulary {report['vocab_size']}; built in "
        f"{report['total_seconds']:.0f}s ({seconds}) with {report['torch_threads']} torch threads, "
        f"torch {report.get('torch_version', '?')}"
        + (f"; test items: {sizes}" if sizes else "")
        + (f"; reused from the stage cache: {', '.join(reused)}" if reused else "")
        + "."
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


@dataclass
class LabData:
    """Everything the lab's models are trained and scored on, generated from the spec."""

    spec: LabSpec
    tasks: dict[str, dict[str, list[Example]]]
    answered: list[Example]
    unanswered: list[Example]
    tokenizer: object
    config: LlamaConfig
    generation: GenerationConfig

    @property
    def task_data(self) -> list[TaskData]:
        return [_task_data(name, TASK_INFO[name], splits) for name, splits in self.tasks.items()]

    def validation(self, task: TaskData) -> list[Example]:
        """The held-out part of the task's opt split, as `task=lab` holds it out for the run
        seed `lab.seed` (language-stratified for lab-multilingual)."""
        pool = task.split("opt")
        size = max(1, round(self.spec.reference.validation_share * len(pool)))
        return validation_examples(task.name, pool, size, self.spec.seed, task.name == MULTILINGUAL_TASK)


TASK_INFO = {
    MATH_TASK: {"kind": "generate", "stop": list(math_problems.STOP), "max_new_tokens": 48},
    MULTILINGUAL_TASK: {"kind": "multiple_choice", "stop": [], "max_new_tokens": 0},
}


def lab_data(spec: LabSpec) -> LabData:
    """Generate the lab's data and tokenizer (seconds) and check the tokenizer covers them."""
    tasks = lab_tasks_from_spec(spec)
    answered, unanswered = _base_corpus(spec)
    vocabulary = math_problems.vocabulary_text(spec.math) + multilingual.vocabulary_text(spec.multilingual)
    tokenizer = build_tokenizer(vocabulary)
    _check_vocabulary(tokenizer, [e for splits in tasks.values() for part in splits.values() for e in part])
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LabData(spec, tasks, answered, unanswered, tokenizer, _model_config(spec, tokenizer), generation)


def expert_masks(
    model: LlamaForCausalLM, overlap: float, seed: int, split: str = "entries"
) -> dict[str, dict[str, torch.Tensor]] | None:
    """Which entries of each weight each expert trains (see `LabSpec.expert_overlap` and
    `expert_split`): an entry with a seeded uniform draw u < overlap is trained by both; the rest,
    with split "entries", by the math expert when u < overlap + (1 - overlap) / 2, else by the
    multilingual expert; with split "layers", by the math expert in the first half of the decoder
    layers and the multilingual expert in the second half (outside the layers: by neither); with
    "layers_reversed", the other way round.
    None when both train all."""
    if overlap >= 1:
        return None
    generator = torch.Generator().manual_seed(seed)
    layers = model.config.num_hidden_layers
    masks: dict[str, dict[str, torch.Tensor]] = {name: {} for name in EXPERTS}
    for name, parameter in model.named_parameters():
        u = torch.rand(parameter.shape, generator=generator)
        shared = u < overlap
        if split == "entries":
            first = u < overlap + (1 - overlap) / 2
            masks["math"][name] = first.to(parameter.dtype)
            masks["multilingual"][name] = (shared | ~first).to(parameter.dtype)
            continue
        layer = _layer_index(name)
        first_half = EXPERTS[0] if split == "layers" else EXPERTS[1]
        owner = None if layer is None else first_half if layer < layers // 2 else _other(first_half)
        for expert in EXPERTS:
            masks[expert][name] = (shared | torch.tensor(expert == owner)).to(parameter.dtype)
    return masks


def _other(expert: str) -> str:
    return EXPERTS[1 - EXPERTS.index(expert)]


def _layer_index(parameter: str) -> int | None:
    """The decoder layer a parameter belongs to ('model.layers.3.mlp...' -> 3), else None."""
    parts = parameter.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def _expert_data(data: LabData, name: str) -> list:
    """The expert's task examples plus its replay share of the base's answered data."""
    task, expert = {
        "math": (MATH_TASK, data.spec.math_expert),
        "multilingual": (MULTILINGUAL_TASK, data.spec.multilingual_expert),
    }[name]
    tokenizer = data.tokenizer
    encoded = [encode(tokenizer, e.prompt, e.target, False) for e in data.tasks[task]["train"]]
    n_replay = round(len(encoded) * expert.replay / (1 - expert.replay))
    replay = random.Random(f"replay/{name}/{data.spec.seed}").sample(
        data.answered, min(n_replay, len(data.answered))
    )
    return encoded + [encode(tokenizer, e.prompt, e.target, False) for e in replay]


def _train_stage(data: LabData, stage: str, models: Mapping[str, LlamaForCausalLM], bar) -> LlamaForCausalLM:
    """Train one of the lab's models: the base from scratch, an expert or the multi-task model
    from the base. The multi-task model trains every weight on both experts' data (task and
    replay) with `LabSpec.multitask_train`."""
    spec, tokenizer = data.spec, data.tokenizer
    pad = tokenizer.pad_token_id
    if stage == "base":
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(data.config)
        corpus = [encode(tokenizer, e.prompt, e.target, True) for e in data.answered]
        corpus += [encode(tokenizer, e.prompt, "", True) for e in data.unanswered]
        train(model, corpus, spec.base_train, spec.seed, pad, bar)
        return model
    model = copy.deepcopy(models["base"])
    if stage == "multitask":
        recipe = spec.multitask_train()
        mixture = _expert_data(data, "math") + _expert_data(data, "multilingual")
        train(model, mixture, recipe, spec.seed + 3, pad, bar)
        return model
    offset = EXPERTS.index(stage) + 1
    expert = spec.math_expert if stage == "math" else spec.multilingual_expert
    masks = expert_masks(model, spec.expert_overlap, spec.seed, spec.expert_split)
    train(
        model, _expert_data(data, stage), expert.train, spec.seed + offset, pad, bar, masks and masks[stage]
    )
    return model


STAGES = ("base", *EXPERTS, "multitask")


def stage_steps(spec: LabSpec, stage: str) -> int:
    steps = {"base": spec.base_train.steps, "math": spec.math_expert.train.steps}
    steps["multilingual"] = spec.multilingual_expert.train.steps
    steps["multitask"] = spec.multitask_train().steps
    return steps[stage]


def trained_models(
    data: LabData, cache_dir: str | Path, stages: tuple[str, ...] = STAGES, progress: bool = True
) -> tuple[dict[str, LlamaForCausalLM], dict[str, dict]]:
    """The lab's trained models by stage, each cached on its own under
    `cache_dir/stages/<stage>-<key>` (keyed by what it depends on, `LabSpec.stage_keys`), so a
    build that changes only the experts' recipe reuses the base; and per stage {"seconds": its
    training time when it was trained, "cached": whether this call reused it}."""
    from sae_merging.models.io import load_model, save_model_folder

    spec, keys = data.spec, data.spec.stage_keys()
    wanted = [s for s in STAGES if s in stages or (s == "base" and len(stages) > 0)]
    todo = [s for s in wanted if not (Path(cache_dir) / "stages" / f"{s}-{keys[s]}" / "stage.json").is_file()]
    bar = tqdm(
        total=sum(stage_steps(spec, s) for s in todo),
        desc=f"lab '{spec.name}'",
        unit="step",
        disable=not progress or not todo,
    )
    models: dict[str, LlamaForCausalLM] = {}
    info: dict[str, dict] = {}
    for stage in wanted:
        folder = Path(cache_dir).expanduser() / "stages" / f"{stage}-{keys[stage]}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            cached = (folder / "stage.json").is_file()
            if not cached:
                remove_leftovers([folder.parent], [folder.name])  # of a killed stage (we hold its lock)
                bar.set_description_str(f"lab '{spec.name}': {stage}")
                begin = time.perf_counter()
                model = _train_stage(data, stage, models, bar)
                seconds = round(time.perf_counter() - begin, 2)
                with atomic_directory(folder) as tmp:
                    save_model_folder(tmp, model.state_dict(), data.config, data.tokenizer, data.generation)
                    atomic_write_json(
                        tmp / "stage.json",
                        {
                            "stage": stage,
                            "key": keys[stage],
                            "seconds": seconds,
                            "torch_threads": torch.get_num_threads(),
                        },
                    )
            models[stage] = load_model(folder)
            info[stage] = {
                "seconds": json.loads((folder / "stage.json").read_text())["seconds"],
                "cached": cached,
            }
    bar.close()
    return models, info


def task_vector_merge(models: Mapping[str, torch.nn.Module], scale: float) -> dict[str, torch.Tensor]:
    """base + scale * (sum of the experts' task vectors), by the project's task arithmetic."""
    from sae_merging.merging.functions import task_arithmetic

    base = models["base"].state_dict()
    experts = [models[name].state_dict() for name in EXPERTS]
    return {k: task_arithmetic(base[k], [e[k] for e in experts], scale) for k in base}


def normalized_gains(accuracy: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per model and task, (model - base) / (that task's expert - base): the share of the
    expert's gain over the base the model keeps (MergeBench's normalized score); None where
    the expert gained nothing."""
    expert_of = {MATH_TASK: "math", MULTILINGUAL_TASK: "multilingual"}
    base = accuracy["base"]

    def gain(model: str, task: str) -> float | None:
        reach = accuracy[expert_of[task]][task] - base[task]
        return (accuracy[model][task] - base[task]) / reach if reach else None

    return {model: {t: gain(model, t) for t in scores} for model, scores in accuracy.items()}


def _with_state(model: LlamaForCausalLM, state: Mapping[str, torch.Tensor]) -> LlamaForCausalLM:
    merged = copy.deepcopy(model)
    merged.load_state_dict(state)
    return merged.eval()


def reference_scores(
    data: LabData, models: Mapping[str, LlamaForCausalLM], limit: int | None = None, evaluator=None
) -> dict:
    """Accuracy of every reference row on the test split (its first `limit` examples per task,
    all when None), task arithmetic's lambda picked on the validation split (the highest mean
    accuracy; ties go to the smaller lambda), and each row's normalized gain."""
    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.merging.functions import weighted_average

    evaluator = evaluator or BuiltinEvaluator(batch_size=128)
    tasks = data.task_data

    def scores(model, split) -> dict[str, float]:
        return {t.name: evaluator.evaluate(model, data.tokenizer, t, split(t)).accuracy for t in tasks}

    def validation(t):
        return data.validation(t)[: None if limit is None else limit // 2]

    def test(t):
        return t.split("test")[:limit]

    grid = {}
    for scale in data.spec.reference.lambdas:
        grid[scale] = scores(_with_state(models["base"], task_vector_merge(models, scale)), validation)
    chosen = max(grid, key=lambda s: (sum(grid[s].values()), -s))
    rows = {name: models[name] for name in ("base", *EXPERTS)}
    rows["average"] = _with_state(
        models["base"],
        {
            k: weighted_average([models[n].state_dict()[k] for n in EXPERTS])
            for k in models["base"].state_dict()
        },
    )
    if "multitask" in models:
        rows["multitask"] = models["multitask"]
    rows["task_arithmetic"] = _with_state(models["base"], task_vector_merge(models, chosen))
    accuracy = {name: scores(model, test) for name, model in rows.items()}
    return {
        "test_accuracy": accuracy,
        "normalized_gain": normalized_gains(accuracy),
        "task_arithmetic": {
            "lambda": chosen,
            "validation_accuracy": {str(s): v for s, v in grid.items()},
            "validation_examples": {t.name: len(validation(t)) for t in tasks},
        },
        "test_examples": {t.name: len(test(t)) for t in tasks},
    }


def _build(spec: LabSpec, out: Path, progress: bool, cache_dir: Path) -> None:
    from sae_merging.models.io import save_model_folder

    started = time.perf_counter()
    timings: dict[str, float] = {}
    begin = time.perf_counter()
    data = lab_data(spec)
    for name, splits in data.tasks.items():
        for split, examples in splits.items():
            write_jsonl(out / "tasks" / name / f"{split}.jsonl", examples)
    timings["data"] = round(time.perf_counter() - begin, 2)

    models, stages = trained_models(data, cache_dir, STAGES, progress)
    for name, model in models.items():
        save_model_folder(out / name, model.state_dict(), data.config, data.tokenizer, data.generation)
        timings[name if name in ("base", "multitask") else f"{name} expert"] = stages[name]["seconds"]
    begin = time.perf_counter()
    reference = reference_scores(data, models)
    timings["evaluation"] = round(time.perf_counter() - begin, 2)
    atomic_write_json(
        out / "build.json",
        {
            "name": spec.name,
            "key": spec.key(),
            "spec": asdict(spec),
            "parameters": sum(p.numel() for p in models["base"].parameters()),
            "vocab_size": len(data.tokenizer),
            "seconds": timings,
            # a cold build's time: every stage's own training time, whether trained now or reused
            "total_seconds": round(sum(timings.values()), 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "reused_stages": [name for name, s in stages.items() if s["cached"]],
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            **reference,
            "tasks": TASK_INFO,
        },
    )


def _check_vocabulary(tokenizer, examples: list[Example]) -> None:
    """Every generated text must tokenize without unknown pieces and decode back exactly."""
    for example in examples:
        for text in [example.prompt + example.target, *(example.prompt + c for c in example.choices)]:
            ids = tokenizer(text)["input_ids"]
            if tokenizer.unk_token_id in ids or tokenizer.decode(ids, skip_special_tokens=True) != text:
                raise ValueError(f"the lab tokenizer does not cover {text!r}")
