"""One CPU thread policy for every entry point: `threads` in conf/config.yaml (run.py, the lab
build, the analysis), `--threads` of experiments/merge_checkpoints.py, experiments/benchmark.py
and experiments/gpu_check.py.

`auto` (the default) is a function of the allocation alone, so a run's thread count (and with
it every float sum's order) is the same whenever it runs on the same allocation: the cores this
process may run on (CPU affinity, capped by a cgroup CPU quota such as a container's or
SLURM's) split among the parallel jobs of a sweep (joblib's `n_jobs` under
`hydra/launcher=lab_parallel`), so that jobs x threads <= cores; never below 1. Not the load
of other processes: that would make results depend on what else ran at the time. On a machine
shared with other work, set `threads=1` (docs/performance.md has the measurement: a second
thread slowed a lab training step several-fold when the cores were busy). An integer is used as
given.

`apply_threads` sets torch's intra-op and inter-op threads and the OpenMP / MKL / OpenBLAS
variables (read by libraries loaded later and by child processes). This module imports
nothing heavy at the top, so entry points can resolve the setting before importing torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

AUTO = "auto"
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def parse(setting: object) -> int | None:
    """The setting as a thread count, None for `auto` (or null); ValueError otherwise."""
    if setting is None or setting == AUTO:
        return None
    if isinstance(setting, bool) or not str(setting).isdigit() or int(setting) < 1:
        raise ValueError(f"threads={setting!r}: expected auto or an integer >= 1")
    return int(setting)


def resolve(setting: object = AUTO, workers: int = 1) -> int:
    """Threads for one of `workers` parallel jobs under `setting` (see the module docstring)."""
    threads = parse(setting)
    if threads is not None:
        return threads
    return max(1, usable_cores() // max(1, workers))


def sweep_workers() -> int:
    """How many jobs of this Hydra sweep run at once on this machine: joblib's n_jobs (-1: all
    cores, -2: all but one, as joblib counts) in a multirun, else 1."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return 1
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return 1
        n_jobs = hydra.launcher.get("n_jobs")
    except (ImportError, ValueError, AttributeError):
        return 1
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return max(1, n_jobs if n_jobs > 0 else usable_cores() + 1 + n_jobs)


def apply_threads(setting: object = AUTO, workers: int | None = None) -> int:
    """Resolve `setting` (for this sweep's jobs when `workers` is None) and apply it to torch
    and to the BLAS / OpenMP variables; returns the thread count."""
    threads = resolve(setting, sweep_workers() if workers is None else workers)
    for name in ENV_VARS:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # settable once per process, before any inter-op work
        pass
    return threads
