"""End-to-end runs on the micro lab: outputs, determinism, resume (bad inputs: test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from transformers import AutoModelForCausalLM

from sae_merging.runtime import runner

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "progress=false", "schedule.steps=3"]
# what must match between runs of the same seed (wall-clock times may differ)
COMPARED = ("test", "opt", "sparsity", "zero_fraction", "fitness_evaluations", "examples_scored", "chosen")


def _run(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    return runner.run(compose_config(SMOKE + overrides), tmp_path / name)


def _same(a: dict, b: dict) -> None:
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, micro_lab):
    folder = tmp_path_factory.mktemp("smoke")
    return folder, runner.run(compose_config(SMOKE), folder / "run")


def test_outputs(smoke_run, micro_lab):
    folder, results = smoke_run
    run_dir = folder / "run"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == results
    assert set(results["test"]) == {"lab-math", "lab-multilingual", "mean"}
    assert results["test"]["mean"] == pytest.approx(
        (results["test"]["lab-math"] + results["test"]["lab-multilingual"]) / 2
    )
    assert results["fitness_evaluations"] > 0 and results["examples_scored"] > 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines] == [0, 1, 2, 3]
    for key in (
        "sparsity_rate",
        "fitness/best",
        "fitness/mean",
        "fitness/worst",
        "archive/sparsity_mean",
        "ratio/mean",
        "evaluations",
        "seconds/merge",
        "seconds/prune",
        "seconds/evaluate",
    ):
        assert key in lines[-1], key
    assert lines[-1]["evaluations"] <= results["fitness_evaluations"]
    # the saved model is the chosen individual, loadable by transformers
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    from sae_merging.runtime.store import IndividualStore

    chosen = IndividualStore(run_dir / "checkpoint" / "individuals").load(results["chosen"]["ident"])
    for name, tensor in chosen.items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_same_seed_same_results(smoke_run, tmp_path):
    _, first = smoke_run
    _same(first, _run(tmp_path, "again", []))


def test_streamed_parents_same_results(smoke_run, tmp_path):
    """Parents read tensor by tensor (as for models above `stream_parents_above_gb`) give the
    same run as parents loaded whole."""
    _, first = smoke_run
    _same(first, _run(tmp_path, "streamed", ["method.stream_parents_above_gb=0"]))


def test_resume_equals_uninterrupted(smoke_run, tmp_path, monkeypatch):
    _, uninterrupted = smoke_run
    from sae_merging.methods.sae import SAE

    original = SAE.ask

    def crash_at_generation_2(self, ctx, state, generation):
        if generation == 2:
            raise KeyboardInterrupt
        return original(self, ctx, state, generation)

    monkeypatch.setattr(SAE, "ask", crash_at_generation_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", [])
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(SAE, "ask", original)
    resumed = _run(tmp_path, "resumed", [])
    _same(uninterrupted, resumed)
    generations = [
        json.loads(x)["generation"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert generations == [0, 1, 2, 3]


def test_saved_model_keeps_base_files_and_has_a_model_card(tmp_path, micro_lab):
    results = runner.run(compose_config(SMOKE + ["method=task_arithmetic"]), tmp_path / "run")
    folder = tmp_path / "run" / "model"
    base = Path(micro_lab.base)
    for name in ("generation_config.json", "tokenizer_config.json"):
        if (base / name).is_file():
            assert (folder / name).read_bytes() == (base / name).read_bytes()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model:\n") and "# task_arithmetic merge" in card
    for task, score in results["test"].items():
        assert f"| {task} | {score:.4f} |" in card
    assert results["wall_seconds"] >= results["seconds"]["save"] + results["seconds"].get("test", 0.0)


def test_a_validation_set_too_small_to_choose_on_is_warned_about():
    """A task file of 10 items holds out 1 for the choice: every candidate ties on it, and the
    run says so (only for selection=validation, only for the tasks concerned)."""
    from types import SimpleNamespace

    from sae_merging.runtime.runner import FEW_CHOICE_ITEMS, few_choice_items

    def task(name, opt):
        return SimpleNamespace(name=name, split=lambda split: [None] * opt)

    held = {"small": 1, "enough": FEW_CHOICE_ITEMS}
    tasks = SimpleNamespace(
        tasks=[task("small", 8), task("enough", 50)], validation_set=lambda t, seed: [None] * held[t.name]
    )
    ctx = SimpleNamespace(selection="validation", tasks=tasks, seed=0)
    (line,) = few_choice_items(ctx)
    assert line.startswith("task small: the final choice scores 1 validation item(s)") and "of 8 opt" in line
    assert few_choice_items(SimpleNamespace(selection="last_draw", tasks=tasks, seed=0)) == []


@pytest.mark.parametrize(
    ("method", "steps", "warned"),
    [
        ("sae", "schedule.steps=2", True),
        ("pso", "method.steps=2", True),
        ("m2n2", "method.steps=3", True),
        ("pso", "schedule.steps=2", False),  # not PSO's step count
        ("task_arithmetic", "schedule.steps=2", False),  # a grid: its steps are its points
    ],
)
def test_a_step_count_beside_a_budget_is_warned_about(method, steps, warned):
    """Under budget.examples a search runs until the budget is spent: a step count given beside
    it is said to be no limit (and nothing is said without a budget)."""
    from conftest import compose_config

    from sae_merging.runtime.preflight import preflight

    overrides = [f"method={method}", "budget.examples=500", steps]
    warnings = preflight(compose_config(overrides), None, overrides).warnings
    said = f"{steps} with budget.examples=500: the search runs until"
    assert any(w.startswith(said) for w in warnings) == warned
    without = [f"method={method}", steps]
    assert not any("budget" in w for w in preflight(compose_config(without), None, without).warnings)
