"""A search's memory for models given as safetensors (issue 26, item 4): `method=sae` on three
synthetic Llama checkpoints (the benchmark's, in bf16, as Hugging Face model folders), run by
`runner.run` as `run.py model=hf` runs it: generation 0 stored and scored, one generation of
children made, stored and scored (`schedule.steps=1`), the final choice on held-out items, the
chosen model tested and saved.

The task is the fixtures' short multiple-choice one (`own_tasks/opposites.jsonl`, 2 items per
draw): scoring is not what is measured, and on a CPU without bf16 arithmetic (AVX2 only: bf16
matrix products at 11 GFLOP/s on one thread, float32 at 75) a 0.86B bf16 model reads about 6
prompt tokens a second, so the paper's prompts (hundreds of tokens each) kept the run from ending.

The run goes in a fresh process; it prints the RSS just before the run (the process's baseline:
torch, transformers and the package imported), the peak RSS of the run (VmHWM, reset before it),
the peak above the baseline against one model's bytes (floor: 2.5x), and, at the highest RSS a
sampling thread saw, its anonymous and file-backed (mapped files') shares and where the run was.

    python experiments/run_memory.py [--params 0.86e9] [--workdir /tmp/sae-benchmark]
        [--task-file tests/fixtures/own_tasks/opposites.jsonl] [run.py overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 2.5
TASK_FILE = ROOT / "tests" / "fixtures" / "own_tasks" / "opposites.jsonl"
OVERRIDES = [
    "model=hf",
    "method=sae",
    "task=jsonl",
    "task.tasks.0.name=opposites",
    "task.tasks.0.kind=multiple_choice",
    "+task.opt_size.opposites=2",
    "task.validation_size=0.2",
    "+task.test_size.opposites=2",
    "schedule.steps=1",
    "model.dtype=bfloat16",
    "device=cpu",
    "threads=1",
    "logger=none",
    "progress=false",
]


class PeakWatch:
    """Samples /proc/self/status every `interval` seconds in a thread and keeps, at the highest
    RSS seen, its anonymous and file-backed shares (mapped checkpoints' pages are file-backed)
    and where the main thread was: what held the memory at the peak."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, {"VmRSS": 0}
        self.main = threading.main_thread().ident
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()

    def _watch(self) -> None:
        from bench import common  # experiments/bench/: beside this script

        while not self.stop.wait(self.interval):
            fields = {name: common.proc_memory(name) for name in ("VmRSS", "RssAnon", "RssFile")}
            if fields["VmRSS"] > self.peak["VmRSS"]:
                frames = traceback.extract_stack(sys._current_frames()[self.main])
                where = [
                    f"{Path(f.filename).name}:{f.lineno} {f.name}"
                    for f in frames
                    if "sae_merging" in f.filename
                ]
                self.peak = {**fields, "where": " < ".join(reversed(where[-8:]))}


def worker(folders: list[str], extra: list[str]) -> dict:
    """The run in this process: baseline RSS, peak RSS (and what held it), wall seconds."""
    from bench import common  # experiments/bench/: beside this script

    from sae_merging.runtime import runner

    overrides = [*OVERRIDES, f"model.base={folders[0]}", f"model.experts=[{folders[1]},{folders[2]}]", *extra]
    config = common.lab_config(overrides)
    exact = common.reset_peak_rss()
    baseline = common.proc_memory("VmRSS")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="run-memory-") as tmp, PeakWatch() as watch:
        runner.run(config, Path(tmp) / "run")
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    return {
        "baseline": baseline,
        "peak": common.proc_memory("VmHWM"),
        "exact": exact,
        "seconds": time.perf_counter() - started,
        "generations": len(lines),
        "sampled": watch.peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=0.86e9)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sae-benchmark"))
    parser.add_argument("--task-file", type=Path, default=TASK_FILE, help="the multiple-choice task's .jsonl")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more run.py overrides")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.overrides)))
        return
    from bench import commands, common  # experiments/bench/: beside this script

    files = common.build_checkpoints(args.workdir / f"llama-{args.params / 1e6:.0f}M", args.params)
    folders = commands.model_folders(args.workdir / f"llama-{args.params / 1e6:.0f}M", files)
    load = os.getloadavg()
    task = f"task.tasks.0.source={args.task_file.resolve()}"
    command = [sys.executable, __file__, "--worker", *map(str, folders), task, *args.overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    model = files[1].stat().st_size
    above = result["peak"] - result["baseline"]
    print(f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {result['seconds']:.0f} s")
    print(f"one model (bf16 safetensors): {model / 1e9:.2f} GB")
    print(f"baseline RSS before the run: {result['baseline'] / 1e9:.2f} GB")
    print(f"peak RSS during the run: {result['peak'] / 1e9:.2f} GB (exact mark: {result['exact']})")
    verdict = "met" if above <= FLOOR * model else "NOT met"
    ratio = above / model
    print(f"peak above baseline: {above / 1e9:.2f} GB = {ratio:.2f}x one model (<= {FLOOR}: {verdict})")
    print(f"metrics lines (generations logged): {result['generations']}")
    sampled = result["sampled"]
    print(
        f"highest sampled RSS {sampled['VmRSS'] / 1e9:.2f} GB: anonymous {sampled['RssAnon'] / 1e9:.2f} GB, "
        f"file-backed {sampled['RssFile'] / 1e9:.2f} GB; at {sampled.get('where')}"
    )


if __name__ == "__main__":
    main()
