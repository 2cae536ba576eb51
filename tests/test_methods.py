"""The baselines end to end on the micro lab: same outputs as SAE, budgets, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from transformers import AutoModelForCausalLM

from sae_merging.methods.m2n2 import M2N2
from sae_merging.methods.pso import PSO
from sae_merging.methods.sae import SAE
from sae_merging.runtime import runner
from sae_merging.runtime.store import IndividualStore

SMOKE = ["experiment=smoke", "progress=false", "selection=last_draw"]  # the paper's counts
OPT_EXAMPLES = 16 + 20  # one optimization draw of the smoke experiment (lab-math + lab-multilingual)
# individuals each method scores in the smoke experiment: grid points; particles x (steps + 1);
# experts + steps x children
SCORED = {"linear": 1, "task_arithmetic": 4, "ties": 4, "dare": 4, "pso": 5 * 3, "m2n2": 2 + 2 * 2}
STEPS = {"linear": 0, "task_arithmetic": 3, "ties": 3, "dare": 3, "pso": 2, "m2n2": 2}
COMPARED = ("test", "opt", "sparsity", "zero_fraction", "fitness_evaluations", "examples_scored", "chosen")


def _run(folder: Path, method: str, overrides: list[str] | None = None) -> dict:
    return runner.run(compose_config(SMOKE + [f"method={method}"] + (overrides or [])), folder)


def _same(a: dict, b: dict) -> None:
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, micro_lab) -> dict[str, tuple[Path, dict]]:
    """One smoke run of every method (SAE included, as the reference for the outputs)."""
    root = tmp_path_factory.mktemp("methods")
    return {method: (root / method, _run(root / method, method)) for method in ["sae", *SCORED]}


@pytest.mark.parametrize("method", list(SCORED))
def test_outputs_match_sae(runs, method):
    run_dir, results = runs[method]
    _, sae = runs["sae"]
    assert set(results) == set(sae)
    assert set(results["test"]) == set(sae["test"]) and set(results["opt"]) == set(sae["opt"])
    assert results["method"] == method
    assert json.loads((run_dir / "results.json").read_text()) == results
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines] == list(range(STEPS[method] + 1))
    for key in ("best/score", "evaluations", "examples_scored", "seconds/evaluate"):
        assert key in lines[-1], key
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    chosen = IndividualStore(run_dir / "checkpoint" / "individuals").load(results["chosen"]["ident"])
    for name, tensor in chosen.items():
        assert torch.equal(model.state_dict()[name], tensor)


@pytest.mark.parametrize("method", list(SCORED))
def test_every_evaluation_goes_through_the_budget(runs, method):
    _, results = runs[method]
    assert results["examples_scored"] == SCORED[method] * OPT_EXAMPLES
    assert results["fitness_evaluations"] >= SCORED[method]


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare"])
def test_grid_search_picks_the_best_scaling_factor(runs, method):
    _, results = runs[method]
    grid = results["details"]["grid"]
    assert len(grid) == 4
    chosen = results["details"]["scaling_factor"]
    assert grid[f"{chosen:g}"] == max(grid.values()) == results["opt"]["mean"]
    assert results["chosen"]["extra"]["scaling_factor"] == chosen


def test_fixed_scaling_factor_is_one_evaluation(tmp_path, micro_lab):
    results = _run(tmp_path / "fixed", "ties", ["method.scaling_factor=0.5"])
    assert results["details"]["scaling_factor"] == 0.5 and list(results["details"]["grid"]) == ["0.5"]
    assert results["examples_scored"] == OPT_EXAMPLES
    assert len((tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("method", ["pso", "m2n2"])
def test_same_seed_same_results(runs, method, tmp_path):
    _same(runs[method][1], _run(tmp_path / "again", method))


@pytest.mark.parametrize(
    ("method", "options", "scored"),
    [
        (
            "pso",
            [
                "method.init_velocity=random",
                "method.random_scope=per_tensor",
                "method.clamp=0.5",
                "method.include_base=false",
            ],
            4 * 3,
        ),
        ("pso", ["method.random_scope=per_particle", "method.steps=1"], 5 * 2),
        ("pso", ["method.swarm_size=6", "method.steps=1"], 6 * 2),  # a second DARE copy of expert 0
        ("m2n2", ["method.interpolation=slerp", "method.children_per_step=3"], 2 + 2 * 3),
        ("m2n2", ["method.interpolation=slerp_flat", "method.split_at=entry"], 2 + 2 * 2),
    ],
)
def test_options_run(method, options, scored, tmp_path, micro_lab):
    results = _run(tmp_path / "options", method, options)
    assert results["examples_scored"] == scored * OPT_EXAMPLES


def test_swarm_must_hold_base_and_experts(tmp_path, micro_lab):
    with pytest.raises(ValueError, match=r"method.swarm_size=2: must hold base \+ expert:math"):
        _run(tmp_path / "small", "pso", ["method.swarm_size=2"])


def test_redrawn_samples_are_scored_too(tmp_path, micro_lab):
    results = _run(tmp_path / "redraw", "m2n2", ["method.redraw_opt=true"])
    assert results["examples_scored"] > SCORED["m2n2"] * OPT_EXAMPLES


# stored individuals before the crash: PSO stores 5 positions + 5 velocities per step, M2N2 one
# child at a time after its 2 experts, SAE 2 children per generation after its 4 founders; each
# crashes inside step 2, after part of it is on disk (SAE's after the archive was re-scored)
CRASH_AFTER_SAVES = {"pso": 24, "m2n2": 5, "sae": 7}


@pytest.mark.parametrize("method", ["pso", "m2n2", "sae"])
@pytest.mark.parametrize("where", ["step start", "mid-step"])
def test_resume_equals_uninterrupted(runs, method, where, tmp_path, monkeypatch):
    _, uninterrupted = runs[method]
    target = {"pso": PSO, "m2n2": M2N2, "sae": SAE}[method]
    if where == "step start":
        original = target.ask

        def crash(self, ctx, state, generation):
            if generation == 2:
                raise KeyboardInterrupt
            return original(self, ctx, state, generation)

        monkeypatch.setattr(target, "ask", crash)
    else:
        original = IndividualStore.save
        saves = []

        def crash(self, ident, tensors, meta=None):
            saves.append(ident)
            if len(saves) > CRASH_AFTER_SAVES[method]:
                raise KeyboardInterrupt
            return original(self, ident, tensors, meta)

        monkeypatch.setattr(IndividualStore, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", method)
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.undo()
    resumed = _run(tmp_path / "resumed", method)
    _same(uninterrupted, resumed)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2]


def test_base_is_required_only_where_used(tmp_path, micro_lab):
    experts = ",".join(str(micro_lab.experts[name]) for name in ("math", "multilingual"))
    models = ["model=hf", f"model.experts=[{experts}]", "model.expert_names=[math,multilingual]"]
    with pytest.raises(ValueError, match="method 'task_arithmetic' needs a base model: set model.base"):
        _run(tmp_path / "no-base", "task_arithmetic", models)
    assert _run(tmp_path / "linear", "linear", models)["examples_scored"] == OPT_EXAMPLES


def test_pso_clamp_limits_are_the_task_vectors_rms():
    """`clamp`'s |v| bound per tensor: clamp x the RMS over both experts' task-vector entries,
    by hand."""
    from types import SimpleNamespace

    base = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 1.0])}
    experts = [
        {"w": torch.tensor([[2.0, 2.0], [3.0, 2.0]]), "b": torch.tensor([3.0, 1.0])},
        {"w": torch.tensor([[1.0, 0.0], [3.0, 5.0]]), "b": torch.tensor([0.0, -3.0])},
    ]
    ctx = SimpleNamespace(
        models=SimpleNamespace(expert_names=["math", "multilingual"]),
        base_tensors=lambda method: base,
        expert_tensors=lambda k: experts[k],
    )
    limits = PSO(clamp=0.5)._limits(ctx)
    # w: squares 1 + 0 + 0 + 4 and 0 + 4 + 0 + 1 over 8 entries; b: 9 + 0 and 0 + 16 over 4
    assert limits["w"] == pytest.approx(0.5 * (10 / 8) ** 0.5)
    assert limits["b"] == pytest.approx(0.5 * (25 / 4) ** 0.5)
