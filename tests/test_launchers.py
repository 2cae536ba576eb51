"""Hydra launchers as the distributed engine: local sweeps through submitit and joblib, the SLURM
config, and the optional vLLM fitness backend's config and import guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from sae_merging.utils import threads

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["experiment=smoke", "seed=0,1", "progress=false", "threads=1", "schedule.steps=1"]


def _run_py(args: list[str]) -> subprocess.CompletedProcess:
    """`python run.py ARGS` from the repository root, with the tests' environment (offline, a
    temporary cache and HF_HOME: nothing is written to the home folder)."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )


def _sweep(sweep_dir: Path, args: list[str]) -> list[dict]:
    """`python run.py -m ARGS` into `sweep_dir`: the results of its jobs 0 and 1."""
    result = _run_py(["-m", f"hydra.sweep.dir={sweep_dir}", *args])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return [json.loads((sweep_dir / str(job) / "results.json").read_text()) for job in (0, 1)]


@pytest.mark.slow  # a sweep through subprocesses
def test_readme_sweep_gives_two_run_folders(tmp_path, micro_lab):
    """The README's `python run.py -m schedule.T0=1,3 scoring=local` (on the micro lab): two
    complete run folders, each with the swept value in its config and its own metrics."""
    args = ["experiment=smoke", "progress=false", "threads=1", "schedule.T0=1,3", "scoring=local"]
    runs = _sweep(tmp_path / "sweep", args)
    for job, t0 in ((0, 1), (1, 3)):
        folder = tmp_path / "sweep" / str(job)
        config = (folder / ".hydra" / "config.yaml").read_text()
        assert f"T0: {t0}" in config and "granularity: local" in config
        assert (folder / "model" / "config.json").is_file()
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 3  # generations 0, 1, 2
    assert runs[0]["config_hash"] != runs[1]["config_hash"]


@pytest.mark.slow  # sweeps through launchers
@pytest.mark.parametrize("launcher", ["submitit_local", "lab_parallel"])
def test_multirun_through_launcher(tmp_path, micro_lab, launcher):
    """Two seeds of the smoke experiment, each job in its own process: submitit's local
    executor (what the SLURM launcher runs on a cluster) and joblib (lab_parallel, 2 jobs)."""
    sweep = (
        SWEEP if launcher != "lab_parallel" else [a if a != "threads=1" else "threads=auto" for a in SWEEP]
    )
    first, second = _sweep(tmp_path / launcher, [f"hydra/launcher={launcher}", *sweep])
    assert (first["seed"], second["seed"]) == (0, 1)
    if launcher == "lab_parallel":  # threads=auto: the 2 jobs at once share the cores
        assert 1 <= first["threads"] <= max(1, threads.usable_cores() // 2)
        assert 1 <= second["threads"] <= max(1, threads.usable_cores() // 2)
    assert first["method"] == second["method"] == "sae"
    assert set(first["test"]) == {"lab-math", "lab-multilingual", "mean"}


def test_slurm_launcher_config_composes():
    """The paper-scale tables run on SLURM: partition, GPUs, time and memory from the config."""
    result = _run_py(["experiment=table2_ablation", "scale=paper", "--cfg", "hydra"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    for setting in ("partition:", "gpus_per_node: 1", "timeout_min:", "mem_gb:"):
        assert setting in result.stdout, setting


def test_vllm_evaluator_config_and_import_guard(monkeypatch):
    """evaluator=vllm composes; without vLLM installed, building it says how to install it."""
    cfg = compose_config(["evaluator=vllm"])
    assert cfg.evaluator._target_ == "sae_merging.evaluation.vllm_backend.VllmEvaluator"
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    from sae_merging.evaluation.vllm_backend import VllmEvaluator

    with pytest.raises(ImportError, match="pip install vllm"):
        VllmEvaluator()
    with pytest.raises(InstantiationException, match="pip install vllm"):  # what run.py reports
        instantiate(cfg.evaluator)
