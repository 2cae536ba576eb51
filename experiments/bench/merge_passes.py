"""Measurement 1: the merge passes against a file copy of one model (read 1 + write 1): the
streaming task arithmetic that the merge command runs (base + 2 experts: read 3 + write 1, twice
the file copy's bytes, so 2x its time is the physical limit), alone and with its global pruning
to 50% in the same call, and SAE's child (2 parents read, both pruned to 60%, merged by eq. 4/5,
the child pruned and stored in the archive: the code `method=sae` runs, `SAE.child` through
`merging.child`), against that task-arithmetic pass (floor 1.5). The merge alone and with
pruning run interleaved in one subprocess (which goes first alternates, at least 2 rounds), the
SAE child in its own. Each merge runs in a fresh subprocess that reports its peak RSS above the
RSS it had just before the run (after imports), against one model's size: the kernel's
high-water mark (VmHWM, what ru_maxrss reports), reset before each run; ru_maxrss itself where
/proc is missing. The output goes to a new file, as in a real run, so page-cache allocation is
included (a virtual machine may make that slow when its memory was idle: the first run's time is
shown too). `--device cuda` makes the SAE child on the GPU (`ChildRecipe.on`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import (
    COMMAND_RATE,
    GB,
    RATE,
    ROOT,
    Row,
    best_of,
    fastest_and_first,
    lab_config,
    proc_memory,
    remove_output,
    reset_peak_rss,
)


def worker(kind: str, files: list[Path], out: Path, repeat: int, device: str = "cpu") -> dict:
    """One streaming job, in a fresh subprocess, run `repeat` times (the first warms caches up;
    its output file is deleted before the next, as a run deletes retired individuals): the wall
    and CPU seconds of every run and the peak RSS above the RSS just before it. `pair`: the
    merge alone and the merge with its global pruning (`merge_checkpoints.py` without and with
    `--prune`), interleaved in one process, which goes first alternating from round to round,
    at least 2 rounds (so neither side is only ever the cold first run)."""
    if kind == "pair":
        names = ["task_arithmetic", "task_arithmetic_pruned"]
        jobs = {name: Job(name, files, out, device) for name in names}
        for round_ in range(max(repeat, 2)):
            for name in names if round_ % 2 == 0 else names[::-1]:
                jobs[name].run()
        return {name: job.result() for name, job in jobs.items()}
    job = Job(kind, files, out, device)
    for _ in range(repeat):
        job.run()
    return job.result()


class Job:
    """Timed runs of one streaming job (see `worker`)."""

    def __init__(self, kind: str, files: list[Path], out: Path, device: str = "cpu") -> None:
        from sae_merging.pruning.magnitude import MagnitudePruner

        self.kind, self.files, self.out, self.device = kind, files, out, device
        self.pruner = MagnitudePruner("global")
        self.sae = sae_method() if kind == "sae" else None
        if self.sae is not None:  # the parents as archive members (stored once, untimed)
            self.archive = sae_archive(self.sae, files[1], files[2], files[1].parent / "sae-archive")
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self.exact = True

    def run(self) -> None:
        from sae_merging.merging import streaming

        files, out = self.files, self.out
        remove_output(out)
        self.exact = exact = reset_peak_rss()
        baseline = (
            proc_memory("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        started, cpu = time.perf_counter(), time.process_time()
        if self.kind == "task_arithmetic":  # what experiments/merge_checkpoints.py runs
            streaming.stream_task_arithmetic(files[0], files[1:], 0.5, out)
        elif self.kind == "task_arithmetic_pruned":  # merge_checkpoints.py --prune 0.5
            streaming.stream_task_arithmetic(files[0], files[1:], 0.5, out, None, COMMAND_RATE, self.pruner)
        else:
            sae_child(self.sae, self.archive, out, device=self.device)
        self.seconds.append(time.perf_counter() - started)
        self.cpu.append(time.process_time() - cpu)
        peak = proc_memory("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.rss.append(peak - baseline)
        remove_output(out)

    def result(self) -> dict:
        inputs = self.files[1:] if self.kind == "sae" else self.files
        read = sum(f.stat().st_size for f in inputs)
        return {
            "seconds": min(self.seconds),
            "runs": self.seconds,
            "cpu": min(self.cpu),
            "cpu_runs": self.cpu,
            "read": read,
            "rss": max(self.rss),
            "exact_rss": self.exact,
        }


SAE_OVERRIDES = ["method=sae", "pruner.granularity=global", "scoring=global", "scorer=zero_count"]


def sae_method():
    """`method=sae` as run.py builds it (global pruning and zero-count scoring)."""
    from hydra.utils import instantiate

    return instantiate(lab_config(SAE_OVERRIDES).method)


def sae_archive(sae, parent_a: Path, parent_b: Path, folder: Path):
    """An archive holding two checkpoint files as members "a" and "b", pruned to RATE as SAE's
    archive holds its members (so stored packed: a child reads and unpacks them as in a run);
    built once under `folder`."""
    from sae_merging.runtime.store import IndividualStore
    from sae_merging.utils.tensorfiles import lazy_tensors

    store = IndividualStore(folder)
    for ident, file in (("a", parent_a), ("b", parent_b)):
        if not store.exists(ident):
            store.save(ident, sae.pruner.pruned(lazy_tensors(file), RATE)[0])
    return store


def sae_child(sae, archive, out: Path, p_a: float = 0.5, p_b: float = 0.4, device: str = "cpu"):
    """SAE's child of the archive's members "a" and "b" (`sae_archive`), made by the method's
    own code (`SAE._make_child`: parents opened from the archive, eq. 5's rule, the recipe on
    the run's device) and stored as a run stores it (`IndividualStore.save`) in the folder
    `out`; returns the child's tensors."""
    from types import SimpleNamespace

    from sae_merging.runtime.context import Member
    from sae_merging.runtime.store import IndividualStore

    ctx = SimpleNamespace(store=archive, timer=None, device=torch.device(device))
    members = [Member(ident=ident, origin="benchmark") for ident in "ab"]
    child = sae._make_child(ctx, *members, p_a, p_b, RATE, None)
    IndividualStore(out).save("child", child.tensors)
    return child.tensors


def in_subprocess(kind: str, args) -> dict:
    """`worker(kind)` in a fresh Python process (its own baseline RSS)."""
    command = [sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--worker", kind]
    command += ["--workdir", str(args.workdir)]
    command += ["--params", str(args.params), "--repeat", str(args.repeat)]
    command += ["--threads", str(args.threads), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def copy_file_seconds(files: list[Path], out: Path, repeat: int) -> float:
    """Seconds to write an unpruned copy of the base tensor by tensor (read + write, new file)."""
    from sae_merging.utils.tensorfiles import TensorFile, TensorFileWriter

    def copy() -> None:
        out.unlink(missing_ok=True)
        with TensorFile(files[0]) as file:
            writer = TensorFileWriter(out, {"format": "pt"}, file.layout())
            for name in file.names():
                writer.write(name, file.view(name))
                file.release(name)
            writer.close()

    seconds = best_of(repeat, copy)
    out.unlink(missing_ok=True)
    return seconds


def measure(args, copy_file: float, model_bytes: int, results: dict) -> list[Row]:
    """Measurement 1's rows (the task-arithmetic and SAE-child jobs, each in a subprocess)."""
    rows: list[Row] = []
    rows.append(
        Row(
            "one model copied to a new file (read 1 + write 1)",
            f"{copy_file:.2f} s",
            "(the reference: a pass that reads and writes one model)",
        )
    )
    # SAE's child is the run's own (SAE.child): it is held in memory while it is made and
    # stored, so its memory floor is one model, not a few chunks. The merge alone and with
    # pruning run interleaved in one process (the pruning row below compares them).
    pair = in_subprocess("pair", args)
    merge = results["task_arithmetic"] = pair["task_arithmetic"]
    sae = results["sae"] = in_subprocess("sae", args)
    # task arithmetic reads 3 models and writes 1: twice the bytes of the file copy, so 2x
    # the copy's time is the physical limit of the pass
    ratio = merge["seconds"] / copy_file
    rows.append(
        Row(
            "task arithmetic, base + 2 experts (read 3 + write 1): against the file copy",
            f"{fastest_and_first(merge)} (CPU {merge['cpu']:.2f} s)",
            f"file copy {copy_file:.2f} s",
            ratio,
            "limit 2.00 (2x the bytes)",
        )
    )
    ratio = sae["seconds"] / merge["seconds"]
    rows.append(
        Row(
            "SAE child (method=sae's code; read 2, prune 3, mix, write 1): against task arithmetic",
            f"{fastest_and_first(sae)} (CPU {sae['cpu']:.2f} s)",
            f"task arithmetic {merge['seconds']:.2f} s",
            ratio,
            "<= 1.50",
            ratio <= 1.50,
        )
    )
    rows.append(
        Row(
            "  same, against the file copy",
            f"{sae['seconds']:.2f} s",
            f"file copy {copy_file:.2f} s",
            sae["seconds"] / copy_file,
        )
    )
    for run, label, rss_floor in ((merge, "task arithmetic", 0.15), (sae, "SAE child", 1.25)):
        rss = run["rss"] / model_bytes
        rows.append(
            Row(
                f"{label}: peak RSS above baseline",
                f"{run['rss'] / GB:.3f} GB",
                f"one model {model_bytes / GB:.2f} GB",
                rss,
                f"<= {rss_floor:.2f}",
                rss <= rss_floor,
            )
        )
    pruned = pair["task_arithmetic_pruned"]
    results["task_arithmetic_pruned"] = pruned
    rows.append(
        Row(
            f"task arithmetic + global pruning to {COMMAND_RATE:.0%} (one call, interleaved)",
            fastest_and_first(pruned),
            f"merge only {fastest_and_first(merge)}",
            pruned["seconds"] / merge["seconds"],
            "<= 1.50",
            pruned["seconds"] / merge["seconds"] <= 1.50,
        )
    )
    rows.append(
        Row(
            "  same, CPU seconds (all threads)",
            f"{pruned['cpu']:.2f} s",
            f"merge only {merge['cpu']:.2f} s",
            pruned["cpu"] / merge["cpu"],
        )
    )
    rss = pruned["rss"] / model_bytes
    rows.append(
        Row(
            "  same: peak RSS above baseline",
            f"{pruned['rss'] / GB:.3f} GB",
            f"one model {model_bytes / GB:.2f} GB",
            rss,
            "<= 0.15",
            rss <= 0.15,
        )
    )
    return rows
