"""Comparisons that can tell methods apart: equal budgets, choices without test data, controls."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import compose_config

from sae_merging.lab.pools import LabTaskPool
from sae_merging.runtime import runner
from sae_merging.runtime.fitness import FitnessEvaluator
from sae_merging.tasks.pool import TaskPool
from sae_merging.utils.settings import SettingError

SMOKE = ["experiment=smoke", "progress=false"]
BUDGET = 700


def _run(folder: Path, overrides: list[str]) -> dict:
    return runner.run(compose_config(SMOKE + overrides), folder)


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory, micro_lab) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("budget")
    methods = ("sae", "pso", "m2n2", "sae_dense")
    return {m: (root / m, _run(root / m, [f"method={m}", f"budget.examples={BUDGET}"])) for m in methods}


@pytest.mark.slow
def test_budget_is_never_passed_and_almost_spent_by_every_search(budget_runs, micro_lab):
    """sae, pso, m2n2 and sae_dense at one budget each score at most the budget, search and
    validation choice together, and leave less than two candidates' price unspent (one that
    did not fit, plus the choice's reserve for the candidates of the last round): the loop
    prices every candidate before making it, runs past the method's own step count if need
    be, and the choice scores the candidates on the validation split."""
    validation = sum(round(0.25 * len(t.split("opt"))) for t in micro_lab.tasks())
    draw = 16 + 20  # the smoke experiment's optimization sample (task.opt_size)
    for method, (folder, results) in budget_runs.items():
        assert BUDGET - 2 * (draw + validation) < results["examples_scored"] <= BUDGET, method
        assert results["budget"] == {"examples": BUDGET}
        lines = _metrics(folder)
        assert results["generations"] == lines[-1]["generation"]
        search = results["examples_scored"] - results["selection_examples_scored"]
        assert lines[-1]["examples_scored"] <= search, method  # an unfinished generation's scoring counts
        chosen_among = results["selection_examples_scored"] / validation
        assert chosen_among == int(chosen_among) >= 2, method  # every candidate, all of validation
    assert budget_runs["m2n2"][1]["generations"] > 2  # ran past the smoke experiment's 2 steps


@pytest.mark.slow
def test_sae_dense_is_sae_without_sparsity(budget_runs):
    """The control prunes nothing: generation-0 variants are copies and no child has zeros
    beyond the experts' own."""
    folder, results = budget_runs["sae_dense"]
    assert results["method"] == "sae_dense"
    assert results["sparsity"] <= budget_runs["sae"][1]["sparsity"]
    assert all(line["sparsity_rate"] in (None, 0.0) for line in _metrics(folder))
    assert results["zero_fraction"] < 0.01


def _recording(monkeypatch) -> list[str]:
    """Every example uid the fitness evaluator is asked about (search and selection)."""
    seen: list[str] = []
    original = FitnessEvaluator.score

    def score(self, ident, tensors, samples):
        seen.extend(e.uid for _, examples in samples.values() for e in examples)
        return original(self, ident, tensors, samples)

    monkeypatch.setattr(FitnessEvaluator, "score", score)
    return seen


@pytest.mark.parametrize("selection", ["validation", "all_draws", "last_draw"])
def test_no_test_example_reaches_the_search_or_the_choice(selection, tmp_path, monkeypatch, micro_lab):
    """The search and the choice never score a test item; the test set is scored once, at the
    end, for the chosen model (test_items.jsonl holds each test item exactly once)."""
    seen = _recording(monkeypatch)
    results = _run(tmp_path / "run", [f"selection={selection}"])
    tasks = {t.name: t for t in micro_lab.tasks()}
    test_uids = {e.uid for t in tasks.values() for e in t.split("test")}
    assert seen and not set(seen) & test_uids
    rows = [json.loads(line) for line in (tmp_path / "run" / "test_items.jsonl").read_text().splitlines()]
    assert sorted(r["uid"] for r in rows) == sorted(test_uids)
    for task in tasks:
        scored = [r["correct"] for r in rows if r["task"] == task]
        assert sum(scored) / len(scored) == pytest.approx(results["test"][task])
    assert results["selection"] == selection
    assert results["objective"] == results["opt"]["mean"]


def _scrambled(examples):
    """Test items with wrong answers and labels: a choice that looked at them would change."""
    return [
        dataclasses.replace(e, answer=e.answer + "7", label=(e.label + 1) % max(len(e.choices), 1))
        for e in examples
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sae", "pso", "task_arithmetic", "best_expert"])
def test_perturbed_test_data_change_no_choice(method, tmp_path, monkeypatch, micro_lab):
    clean = _run(tmp_path / "clean", [f"method={method}"])
    original = TaskPool.test_set
    monkeypatch.setattr(
        LabTaskPool, "test_set", lambda self, task, seed: _scrambled(original(self, task, seed))
    )
    perturbed = _run(tmp_path / "perturbed", [f"method={method}"])
    for key in ("chosen", "objective", "opt", "examples_scored", "details"):
        assert perturbed[key] == clean[key], key
    items = [(tmp_path / run / "test_items.jsonl").read_text() for run in ("clean", "perturbed")]
    assert items[0] != items[1]  # the perturbation reached the test scores, and only them


def test_validation_set_is_held_out_of_every_draw_and_of_test(micro_lab):
    tasks = micro_lab.tasks()
    pool = TaskPool(
        tasks, opt_size={t.name: 10 for t in tasks}, validation_size={t.name: 0.25 for t in tasks}
    )
    for task in tasks:
        held = {e.uid for e in pool.validation_set(task, 3)}
        assert len(held) == round(0.25 * len(task.split("opt")))
        drawn = {e.uid for draw in range(30) for e in pool.opt_sample(task, 3, draw)}
        assert drawn and not drawn & held
        assert drawn | held == {e.uid for e in task.split("opt")}  # the rest is all drawn from
        assert not held & {e.uid for e in task.split("test")}
    with pytest.raises(SettingError, match="validation_size='nope': names an unknown task"):
        TaskPool(tasks, validation_size={"nope": 3})
    with pytest.raises(SettingError, match="must be a finite number in \\(0, 1\\)"):
        TaskPool(tasks, validation_size={tasks[0].name: 1.5})


def test_all_draws_is_the_mean_over_every_scored_draw_example(tmp_path, micro_lab):
    """selection=all_draws: the chosen member's objective is its accuracy over every draw-pool
    example in the fitness cache, and no final member scores higher."""
    results = _run(tmp_path / "run", ["selection=all_draws", "schedule.steps=3"])
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    cache = saved["fitness"]["cache"]

    def accuracy(ident: str) -> float:
        per_task = []
        for task in micro_lab.tasks():
            known = [cache[ident][e.uid] for e in task.split("opt") if e.uid in cache[ident]]
            per_task.append(sum(known) / len(known))
        return sum(per_task) / len(per_task)

    chosen = results["chosen"]["ident"]
    assert results["objective"] == pytest.approx(accuracy(chosen))
    members = [m["ident"] for m in saved["state"]["members"]]
    assert chosen in members and all(accuracy(m) <= accuracy(chosen) for m in members)
    assert results["selection_examples_scored"] == 0  # the cache already holds every draw


def test_validation_without_a_held_out_set_is_a_config_error(tmp_path, micro_lab):
    from sae_merging.utils.settings import ConfigError

    with pytest.raises(ConfigError, match="selection='validation'"):
        _run(tmp_path / "run", ["task.validation_size=null"])
    with pytest.raises(ConfigError, match="selection="):
        _run(tmp_path / "run2", ["selection=best_on_test"])
    with pytest.raises(ConfigError, match="budget.examples"):
        _run(tmp_path / "run3", ["budget.examples=0"])
