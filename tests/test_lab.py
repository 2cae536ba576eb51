"""The lab's build: deterministic weights, disjoint splits, sizes of the evaluation sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sae_merging.lab import math_problems
from sae_merging.lab.build import EXPERTS, LabSpec, build_lab, lab_tasks_from_spec


def _weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_same_spec_same_weights(micro_lab, micro_lab_config, tmp_path):
    """A second build of the micro lab (same spec, torch version and thread count) from scratch
    has bit-identical base and expert weights, and the same scores."""
    again = build_lab(LabSpec.from_dict(micro_lab_config), tmp_path / "cache", progress=False)
    assert again.root.name == micro_lab.root.name
    for name in ("base", *EXPERTS):
        assert _weights_hash(again.root / name) == _weights_hash(micro_lab.root / name), name
    assert again.report["test_accuracy"] == micro_lab.report["test_accuracy"]


def test_thread_count_is_part_of_the_spec(micro_lab_config):
    """Weights depend on the build's thread count, so it is in the cache key: a build made with
    another count is never mistaken for this one."""
    spec = LabSpec.from_dict(micro_lab_config)
    other = LabSpec.from_dict({**micro_lab_config, "threads": spec.threads + 1})
    assert spec.key() != other.key()


def test_default_lab_evaluation_sets():
    """>= 2,000 test items per task, lab-multilingual >= 400 distinct questions in 5 languages;
    math test and optimization problems are distinct calculations; no test calculation or
    question is in the optimization pool or in training."""
    spec = LabSpec()
    tasks = lab_tasks_from_spec(spec)
    math, multilingual = tasks["lab-math"], tasks["lab-multilingual"]
    assert len(math["test"]) >= 2000 and len(multilingual["test"]) >= 2000
    assert len({e.uid.rsplit("/", 1)[0] for e in multilingual["test"]}) >= 400
    assert {e.group for e in multilingual["test"]} == set(spec.multilingual.languages)

    def calculation(example) -> str:  # the worked answer is the calculation itself
        return example.target

    for split in ("test", "opt"):
        assert len({calculation(e) for e in math[split]}) == len(math[split]), split
    assert not {calculation(e) for e in math["test"]} & {calculation(e) for e in math["opt"] + math["train"]}
    prompts = {split: {e.prompt for e in multilingual[split]} for split in ("train", "opt", "test")}
    assert not prompts["test"] & (prompts["opt"] | prompts["train"])


def test_too_many_distinct_problems_is_a_clear_error():
    spec = math_problems.MathSpec(max_operand=2, steps=(1,))
    with pytest.raises(ValueError, match="distinct problems"):
        math_problems.generate(spec, "test", 50, 0, distinct=True)


def test_reference_rows_of_the_micro_lab(micro_lab):
    """Every build reports base, both experts, the 50/50 average, the multi-task model and task
    arithmetic on the full test sets; task arithmetic's lambda is the grid value with the best
    validation mean, its model is base + lambda * (sum of task vectors) and scores what the
    report says; the normalized gains follow their formula."""
    import torch

    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.lab.build import lab_data, task_vector_merge
    from sae_merging.lab.spec import LAMBDA_GRID
    from sae_merging.models.io import load_model, load_tokenizer

    report = micro_lab.report
    accuracy, gains = report["test_accuracy"], report["normalized_gain"]
    assert list(accuracy) == ["base", "math", "multilingual", "average", "multitask", "task_arithmetic"]
    tasks = {t.name: t for t in micro_lab.tasks()}
    assert report["test_examples"] == {name: len(t.split("test")) for name, t in tasks.items()}

    ta = report["task_arithmetic"]
    assert LAMBDA_GRID == tuple(round(0.2 + 0.1 * i, 1) for i in range(11))
    assert ta["lambda"] in LAMBDA_GRID
    grid = {float(s): sum(v.values()) for s, v in ta["validation_accuracy"].items()}
    assert sorted(grid) == list(LAMBDA_GRID)
    assert grid[ta["lambda"]] == max(grid.values())
    spec = LabSpec.from_dict(report["spec"])
    assert spec.key() == report["key"]
    validation = lab_data(spec).validation(tasks["lab-math"])
    assert (
        ta["validation_examples"]["lab-math"]
        == len(validation)
        == round(0.25 * len(tasks["lab-math"].split("opt")))
    )

    models = {name: load_model(micro_lab.root / name) for name in ("base", *EXPERTS)}
    merged = task_vector_merge(models, ta["lambda"])
    base, experts = models["base"].state_dict(), [models[n].state_dict() for n in EXPERTS]
    for name, tensor in merged.items():
        expected = base[name] + ta["lambda"] * sum(e[name] - base[name] for e in experts)
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=0)
    model = load_model(micro_lab.base)
    model.load_state_dict(merged)
    tokenizer = load_tokenizer(micro_lab.base)
    evaluator = BuiltinEvaluator(batch_size=128)
    for name, task in tasks.items():
        score = evaluator.evaluate(model, tokenizer, task, task.split("test")).accuracy
        assert score == accuracy["task_arithmetic"][name], name

    expert_of = {"lab-math": "math", "lab-multilingual": "multilingual"}
    for row, scores in accuracy.items():
        for task, value in scores.items():
            reach = accuracy[expert_of[task]][task] - accuracy["base"][task]
            expected = (value - accuracy["base"][task]) / reach if reach else None
            assert gains[row][task] == pytest.approx(expected) if reach else gains[row][task] is None


def test_expert_overlap_splits_the_weights(micro_lab_config, tmp_path):
    """`expert_overlap=0`: the two experts' task vectors touch disjoint entries (every other
    entry keeps the base's value exactly); the stage cache reuses the base across recipes."""
    from sae_merging.lab.build import lab_data, trained_models

    spec = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0.0})
    models, info = trained_models(lab_data(spec), tmp_path, ("math", "multilingual"), progress=False)
    assert not any(i["cached"] for i in info.values())
    base = models["base"].state_dict()
    deltas = [{k: v - base[k] for k, v in models[n].state_dict().items()} for n in EXPERTS]
    moved = [sum(int((d[k] != 0).sum()) for k in d) for d in deltas]
    assert all(m > 0 for m in moved)
    assert sum(int(((deltas[0][k] != 0) & (deltas[1][k] != 0)).sum()) for k in base) == 0

    half = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0.5})
    assert half.stage_keys()["base"] == spec.stage_keys()["base"]
    assert half.stage_keys()["math"] != spec.stage_keys()["math"]
    assert half.stage_keys()["multitask"] == spec.stage_keys()["multitask"]
    again, info = trained_models(lab_data(half), tmp_path, ("math",), progress=False)
    assert info["base"]["cached"] and not info["math"]["cached"]
    shared = sum(int(((again["math"].state_dict()[k] - base[k]) != 0).sum()) for k in base)
    assert moved[0] < shared  # 75% of the entries are the expert's at overlap 0.5, against 50%


def test_expert_split_by_layers(micro_lab_config, tmp_path):
    """`expert_split=layers`, overlap 0: the math expert moves only the first half of the decoder
    layers, the multilingual expert only the second half, neither the embeddings or final norm
    (`layers_reversed` swaps the halves);
    the split changes the experts' keys only, and its default leaves every key as it was."""
    import torch

    from sae_merging.lab.build import expert_masks, lab_data, trained_models
    from sae_merging.utils.settings import InputError

    spec = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0.0, "expert_split": "layers"})
    models, _ = trained_models(lab_data(spec), tmp_path, ("math", "multilingual"), progress=False)
    base = models["base"].state_dict()
    half = models["base"].config.num_hidden_layers // 2
    for expert, owned in (("math", range(half)), ("multilingual", range(half, 2 * half))):
        moved = {k for k, v in models[expert].state_dict().items() if not torch.equal(v, base[k])}
        prefixes = {f"model.layers.{i}." for i in owned}
        assert moved and all(any(k.startswith(p) for p in prefixes) for k in moved), expert
        assert all(any(k.startswith(p) and k in moved for k in base) for p in prefixes), expert

    reverse = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0, "expert_split": "layers_reversed"})
    swapped = expert_masks(models["base"], 0.0, 0, "layers_reversed")
    straight = expert_masks(models["base"], 0.0, 0, "layers")
    assert all(torch.equal(m, straight["multilingual"][k]) for k, m in swapped["math"].items())
    assert all(torch.equal(m, straight["math"][k]) for k, m in swapped["multilingual"].items())
    assert reverse.stage_keys()["math"] != spec.stage_keys()["math"]

    entries = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0.0})
    explicit = LabSpec.from_dict({**micro_lab_config, "expert_overlap": 0.0, "expert_split": "entries"})
    assert explicit.key() == entries.key() and explicit.stage_keys() == entries.stage_keys()
    assert spec.key() != entries.key()
    keys, old = spec.stage_keys(), entries.stage_keys()
    same = [keys[s] == old[s] for s in ("base", "math", "multilingual", "multitask")]
    assert same == [True, False, False, True]
    with pytest.raises(InputError, match="expert_split"):
        LabSpec.from_dict({**micro_lab_config, "expert_split": "heads"})


def test_every_preset_composes_with_its_own_hash():
    """lab=low_interference, default, high_interference and micro compose into valid specs with
    distinct cache keys; the three interference presets share the base and the multi-task model
    (they differ only in the experts' recipe)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    specs = {}
    for name in ("low_interference", "default", "high_interference", "micro"):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"lab={name}"])
        specs[name] = LabSpec.from_dict(OmegaConf.to_container(cfg.lab, resolve=True))
        assert specs[name].name == name
    assert len({s.key() for s in specs.values()}) == 4
    dial = [specs[n].stage_keys() for n in ("low_interference", "default", "high_interference")]
    assert len({k["base"] for k in dial}) == 1
    assert len({k["multitask"] for k in dial}) == 1
    assert len({(k["math"], k["multilingual"]) for k in dial}) == 3


def test_floors_of_the_interference_presets():
    """experiments/lab_presets.py's floors on a hand-made report: margins, task arithmetic over
    the better expert, the ceiling over task arithmetic, the average's kept gain, each with the
    value worked out by hand; a margin under 25 is reported as not met."""
    import importlib.util

    from sae_merging.lab.build import normalized_gains

    path = Path(__file__).resolve().parents[1] / "experiments" / "lab_presets.py"
    spec = importlib.util.spec_from_file_location("lab_presets", path)
    presets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(presets)

    def report(math_expert_on_math: float) -> dict:
        accuracy = {  # (lab-math, lab-multilingual)
            "base": (0.50, 0.40),
            "math": (math_expert_on_math, 0.42),
            "multilingual": (0.52, 0.70),
            "average": (0.65, 0.50),
            "multitask": (0.90, 0.80),
            "task_arithmetic": (0.74, 0.60),
        }
        accuracy = {m: {"lab-math": a, "lab-multilingual": b} for m, (a, b) in accuracy.items()}
        return {"test_accuracy": accuracy, "normalized_gain": normalized_gains(accuracy)}

    # margins 80 - 52 = 28 and 70 - 42 = 28; means: experts 61 and 61, TA 67, multitask 85;
    # average kept (65 - 50) / 30 = 0.50 and (50 - 40) / 30 = 0.33
    assert presets.floors("default", report(0.80)) == [
        ("each expert beats the other on its task by >= 25", "28.0 / 28.0", True),
        ("task_arithmetic mean >= better expert's + 5", "+6.0", True),
        ("multitask mean >= task_arithmetic's + 4", "+18.0", True),
        ("average keeps <= 0.8 of the gain on a task", "0.50 / 0.33", True),
    ]
    weak = presets.floors("default", report(0.75))  # margin 23; best expert mean still 61
    assert weak[0] == ("each expert beats the other on its task by >= 25", "23.0 / 28.0", False)
    assert presets.floors("high_interference", report(0.80)) == [
        ("task_arithmetic mean <= better expert's mean", "67.0 vs 61.0", False)
    ]
    assert presets.floors("micro", report(0.80)) == []
    assert "| task_arithmetic mean >= better expert's + 5 | +6.0 | met |" in presets.floors_table(
        "default", report(0.80)
    )


def test_one_validation_share_applies_to_every_lab_task():
    """`task=lab task.validation_size=0.25` (one number) is that share for each task, as a
    per-task mapping gives it."""
    from sae_merging.lab.settings import LabTaskPoolSettings

    one = LabTaskPoolSettings(validation_size=0.25)
    assert one.validation_size == {"lab-math": 0.25, "lab-multilingual": 0.25}
    assert (
        one.validation_size
        == LabTaskPoolSettings(validation_size={"lab-math": 0.25, "lab-multilingual": 0.25}).validation_size
    )
