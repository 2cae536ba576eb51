"""docs/adding-a-method.md, proved: a method of one Python file and one YAML file
(`examples/random_search.py`, `examples/conf/method/random_search.yaml`), which writes no
budget, storage, checkpoint, selection, results or logging code, gets all of them from the loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose_config
from safetensors.torch import load_file
from test_loggers import fake_wandb  # noqa: F401  (the recording stand-in for wandb)

from sae_merging.runtime import runner
from sae_merging.runtime.context import Member
from sae_merging.runtime.selection import validation_sample

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BUDGET = 700
DRAW = 16 + 20  # the smoke experiment's optimization sample (task.opt_size)
RUN = ["experiment=smoke", "progress=false", "threads=1", "method=random_search", f"budget.examples={BUDGET}"]
SEARCH_PATH = f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]"
COMPARED = ("test", "opt", "chosen", "examples_scored", "fitness_evaluations", "generations", "details")


def test_the_example_method_is_one_short_file():
    assert len((EXAMPLES / "random_search.py").read_text().splitlines()) < 60


@pytest.fixture(scope="module")
def example(micro_lab):
    """`examples/` importable, as `PYTHONPATH=examples` makes it for run.py."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        yield


def _metrics(folder: Path) -> list[dict]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time" and not k.startswith("seconds/")} for line in lines]


def test_budget_selection_results_and_logger_come_from_the_loop(example, fake_wandb, tmp_path, micro_lab):  # noqa: F811
    cfg = compose_config([SEARCH_PATH, *RUN, "logger=wandb"])
    results = runner.run(cfg, tmp_path / "run")
    size = sum(round(0.25 * len(t.split("opt"))) for t in micro_lab.tasks())  # task.validation_size
    # the budget: never passed, spent but for less than two candidates' price
    assert BUDGET - 2 * (DRAW + size) < results["examples_scored"] <= BUDGET
    assert results["generations"] > 5  # past the method's own 5 steps: the budget decides
    # validation selection: every kept candidate scored on the validation split, the best chosen
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    kept = [Member.from_json(m) for m in saved["state"]["members"]]
    _, ctx, _ = runner.prepare(cfg, tmp_path / "run")
    accuracy = {m.ident: ctx.score(m, validation_sample(ctx)).mean for m in kept}
    assert results["selection"] == "validation" and results["selection_examples_scored"] == len(kept) * size
    assert results["objective"] == accuracy[results["chosen"]["ident"]] == max(accuracy.values())
    # results.json, the model, and the logger's curves: one record per generation in metrics.jsonl
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    assert results["method"] == "random_search" and (tmp_path / "run" / "model" / "config.json").is_file()
    logged = [call[1] for call in fake_wandb.calls if call[0] == "log"]
    lines = _metrics(tmp_path / "run")
    assert [r["generation"] for r in logged] == [line["generation"] for line in lines]
    assert all(r["best/score"] == line["best/score"] for r, line in zip(logged, lines))


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(example, tmp_path):
    """`python run.py` killed (SIGKILL) once it has finished generation 2, then run again in
    the same folder: its results, metrics and model equal an uninterrupted run's."""
    whole = runner.run(compose_config([SEARCH_PATH, *RUN]), tmp_path / "whole")
    folder = tmp_path / "killed"
    command = [sys.executable, "run.py", SEARCH_PATH, *RUN, f"hydra.run.dir={folder}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLES)])}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = folder / "metrics.jsonl"
    while process.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (folder / "results.json").exists(), "the run finished before it was killed"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((folder / "results.json").read_text())
    assert {k: resumed[k] for k in COMPARED} == {k: whole[k] for k in COMPARED}
    assert _metrics(folder) == _metrics(tmp_path / "whole")
    model, other = (
        load_file(folder / "model" / "model.safetensors"),
        load_file(tmp_path / "whole" / "model" / "model.safetensors"),
    )
    assert model.keys() == other.keys() and all((model[k] == other[k]).all() for k in model)
