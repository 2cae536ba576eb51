"""End-to-end runs on the micro lab: outputs, determinism, resume, validation errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from transformers import AutoModelForCausalLM

from sae_merging.runtime import runner
from sae_merging.runtime.validation import ConfigError

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

    original = SAE.step

    def crash_at_generation_2(self, ctx, state, generation):
        if generation == 2:
            raise KeyboardInterrupt
        return original(self, ctx, state, generation)

    monkeypatch.setattr(SAE, "step", crash_at_generation_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", [])
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(SAE, "step", original)
    resumed = _run(tmp_path, "resumed", [])
    _same(uninterrupted, resumed)
    generations = [
        json.loads(x)["generation"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert generations == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.s_min=0.7", "schedule.s_min=0.7: must be <= schedule.s_max (0.6)"),
        ("schedule.s_max=1.2", "schedule.s_max=1.2: must be a rate in [0, 1)"),
        ("method.archive_size=1", "method.archive_size=1: must be an integer >= 2"),
        ("+task.opt_size.nonexistent=5", "task.opt_size names unknown task 'nonexistent'"),
        ("pruner.granularity=rows", "pruner.granularity='rows': must be one of local, global"),
    ],
)
def test_config_errors_before_any_work(override, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        runner.run(compose_config(SMOKE + [override]), tmp_path / "bad")
    assert any(message in line for line in error.value.problems)
    assert not (tmp_path / "bad" / "checkpoint").exists()


def test_missing_model_path_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "nowhere")
    command = [
        sys.executable,
        "run.py",
        "model=hf",
        f"model.experts=[{missing},{missing}2]",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("config error")]
    expected = "no such file or folder (a local path or a hub id 'owner/name')"
    assert lines == [
        f"config error: model.experts[0]={missing!r}: {expected}",
        f"config error: model.experts[1]={missing + '2'!r}: {expected}",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=pso", "method.random_scope=diagonal"], "method.random_scope='diagonal': one of"),
        (["method=ties", "method.density=1.5"], "method.density=1.5: must be in (0, 1]"),
        (["method=m2n2", "method.archive_size=1"], "method.archive_size=1: must be an integer >= 2"),
        (["method=sae", "method.archive_size=3"], "method.archive_size=3: must hold the 2 experts"),
    ],
)
def test_method_settings_are_config_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        runner.run(compose_config(SMOKE + overrides), tmp_path / "bad")
    assert any(message in line for line in error.value.problems), error.value.problems


def test_base_required_before_loading(tmp_path, micro_lab):
    experts = [str(path) for path in micro_lab.experts.values()]
    overrides = ["model=hf", f"model.experts=[{experts[0]},{experts[1]}]", "method=task_arithmetic"]
    with pytest.raises(ConfigError) as error:
        runner.run(compose_config(SMOKE + overrides), tmp_path / "bad")
    assert error.value.problems == ["method 'task_arithmetic' needs a base model: set model.base=PATH_OR_ID"]
