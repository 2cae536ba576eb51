"""The thread policy: `auto` never oversubscribes, sweep jobs split the cores, and every entry
point applies it (torch's thread count after the policy, in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_merging.utils import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def machine(monkeypatch):
    """A machine of `cores` cores whose other processes keep `busy` of them busy."""

    def set_machine(cores: int, busy: float) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (busy, busy, busy))
        monkeypatch.setattr(threads, "CGROUP_CPU_MAX", Path("/nonexistent/cpu.max"))

    return set_machine


@pytest.mark.parametrize(
    "cores,workers,expected",
    [
        (8, 1, 8),  # every core
        (2, 1, 2),
        (8, 2, 4),  # a 2-job sweep: 2 x 4 <= 8
        (8, 3, 2),  # 3 x 2 <= 8
        (2, 2, 1),  # lab_parallel on 2 cores
        (2, 4, 1),  # more jobs than cores: one thread each
    ],
)
def test_auto_is_the_allocation_split_among_jobs_whatever_the_load(machine, cores, workers, expected):
    """`auto` never oversubscribes the allocation, and the load of other processes does not
    change it (a run's float sums do not depend on what else ran at the time)."""
    for busy in (0.0, 1.7, 40.0):
        machine(cores, busy)
        assert threads.resolve("auto", workers) == expected
        assert threads.resolve(None, workers) == expected  # null means auto
    assert expected * workers <= max(cores, workers)  # one each at worst
    assert threads.resolve(3, workers) == threads.resolve("3", workers) == 3  # a number as given


def test_cgroup_quota_caps_the_cores(machine, monkeypatch, tmp_path):
    machine(16, 0.0)
    quota = tmp_path / "cpu.max"
    quota.write_text("250000 100000\n")  # 2.5 CPUs
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", quota)
    assert threads.usable_cores() == 2
    quota.write_text("max 100000\n")
    assert threads.usable_cores() == 16


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_setting_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"threads=.*expected auto or an integer >= 1"):
        threads.resolve(bad)


def test_sweep_workers_from_joblib_launcher(monkeypatch):
    """Inside a joblib multirun the job count is the launcher's n_jobs (-1: all cores)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    assert threads.sweep_workers() == 1  # no Hydra job: one worker
    for n_jobs, expected in ((2, 2), (-1, threads.usable_cores())):
        hydra = OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": {"n_jobs": n_jobs}})
        monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda hydra=hydra: hydra))
        assert threads.sweep_workers() == expected
    single = OmegaConf.create({"mode": RunMode.RUN, "launcher": {"n_jobs": 2}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: single))
    assert threads.sweep_workers() == 1


APPLY = """
import json, os, sys
import torch
from sae_merging.utils import threads
applied = threads.apply_threads(sys.argv[1], workers=int(sys.argv[2]))
print(json.dumps({"applied": applied, "torch": torch.get_num_threads(),
                  "interop": torch.get_num_interop_threads(), "omp": os.environ["OMP_NUM_THREADS"],
                  "expected": max(1, threads.usable_cores() // int(sys.argv[2]))}))
"""


@pytest.mark.parametrize("setting,workers", [("1", 1), ("auto", 1), ("auto", 2)])
def test_policy_is_applied_to_torch(setting, workers):
    """In a fresh process (inter-op threads can be set only once): torch's intra-op and
    inter-op threads and the OpenMP variable equal the policy's count."""
    result = subprocess.run(
        [sys.executable, "-c", APPLY, setting, str(workers)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = 1 if setting == "1" else got["expected"]
    assert got["applied"] == got["torch"] == got["interop"] == int(got["omp"]) == expected


def test_merge_command_applies_threads(tmp_path):
    """`merge_checkpoints.py --threads 1` runs its merge with one torch thread: the command
    reports the count it applied, and refuses a bad one in one line."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(8, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "generation_config.json").write_text("{}")
    from sae_merging.lab.tokenizer import build_tokenizer

    build_tokenizer(["a b"]).save_pretrained(folder)
    command = [
        sys.executable,
        "experiments/merge_checkpoints.py",
        "--base",
        str(folder),
        "--experts",
        str(folder),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    ok = subprocess.run(
        [*command, "--out", str(tmp_path / "m"), "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().endswith("(1 threads)")
    bad = subprocess.run(
        [*command, "--out", str(tmp_path / "n"), "--threads", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: threads='0': expected auto or an integer >= 1"
