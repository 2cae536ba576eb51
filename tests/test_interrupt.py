"""An interrupted run (SIGINT, SIGTERM) ends with one line saying how to resume, keeps what
finished, and the resumed run's results equal an uninterrupted run's; its wall time counts
every process."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose_config

from sae_merging.runtime import runner

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["experiment=smoke", "schedule.steps=6", "progress=false", "threads=1"]
COMPARED = ("test", "opt", "sparsity", "zero_fraction", "fitness_evaluations", "examples_scored", "chosen")


def _start(run_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "run.py", *OVERRIDES, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_generation(process: subprocess.Popen, run_dir: Path, generation: int) -> None:
    """Until metrics.jsonl holds `generation` (no deadline: a loaded machine is only slower)."""
    metrics = run_dir / "metrics.jsonl"
    while process.poll() is None:
        if metrics.is_file():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            if any(line["generation"] >= generation for line in lines):
                return
        time.sleep(0.05)
    pytest.fail(f"the run ended before generation {generation}: {process.stderr.read()[-2000:]}")


def _interrupt(run_dir: Path, signum: int) -> tuple[int, str, str]:
    process = _start(run_dir)
    _wait_for_generation(process, run_dir, 1)
    process.send_signal(signum)
    out, err = process.communicate()
    return process.returncode, out, err


@pytest.mark.slow
def test_sigint_leaves_a_resumable_run_equal_to_an_uninterrupted_one(tmp_path, micro_lab):
    run_dir = tmp_path / "interrupted"
    code, out, err = _interrupt(run_dir, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"run folder: {run_dir}" in out
    last = err.strip().splitlines()[-1]
    prefix = f"interrupted: finished generations are kept in {run_dir}; resume with: "
    assert last.startswith(prefix)
    command = shlex.split(last[len(prefix) :])
    assert command == ["python", "run.py", *OVERRIDES, f"hydra.run.dir={run_dir}"]
    # what finished is on disk: the checkpoint, its individuals, the metrics, the time spent
    checkpoint = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    done = checkpoint["state"]["generation"]
    assert done >= 1 and not (run_dir / "results.json").exists()
    individuals = run_dir / "checkpoint" / "individuals"
    assert all((individuals / m["ident"]).exists() for m in checkpoint["state"]["members"])
    metrics = [json.loads(x)["generation"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[: done + 1] == list(range(done + 1))
    first_share = json.loads((run_dir / "checkpoint" / "elapsed.json").read_text())["seconds"]
    assert first_share > 0

    started = time.perf_counter()
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True)
    second_share = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip().splitlines()[-1] == f"run folder: {run_dir}"
    results = json.loads((run_dir / "results.json").read_text())
    uninterrupted = runner.run(compose_config(OVERRIDES), tmp_path / "uninterrupted")
    assert {k: results[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}
    # the wall time sums both processes (each measured from inside, so below the outer clocks)
    assert first_share < results["wall_seconds"] <= first_share + second_share + 0.01


@pytest.mark.slow
def test_sigterm_ends_the_run_as_sigint_does(tmp_path, micro_lab):
    run_dir = tmp_path / "terminated"
    code, _, err = _interrupt(run_dir, signal.SIGTERM)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"interrupted: finished generations are kept in {run_dir}")
    assert (run_dir / "checkpoint" / "state.json").is_file()
    assert os.path.getsize(run_dir / "metrics.jsonl") > 0
