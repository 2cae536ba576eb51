"""Measurement 5: whole commands, each its own process (wall and CPU seconds, peak RSS through
wait4), on model folders around the synthetic weights, at --params and at each of
--command-params (default 0.22e9: the small-model case, where start-up weighs most): `cp -r` of
the base folder, our merge command (task arithmetic, lambda 0.5) with and without `--prune 0.5`,
and `mergekit-yaml` on the same merge (mergekit 0.1.5 in its own environment, given by
--mergekit or found on PATH; skipped with a note when absent), at 1 thread, at every core, and
at each one's default (ours: threads=auto; mergekit: torch's). The runs are interleaved (cp,
ours, mergekit, ..., then again) and the fastest of --repeat is kept, so a change of load hits
all sides alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sae_merging.utils.threads import usable_cores

from .common import (
    COMMAND_RATE,
    GB,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    ROOT,
    VOCAB,
    Row,
    build_checkpoints,
    llama_layout_of,
)

# the merge command's limit against mergekit-yaml's wall time: below 0.5B parameters (start-up
# weighs more) and above
MERGEKIT_FLOOR_SMALL, MERGEKIT_FLOOR = 0.35, 0.30


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


def measure(args, results: dict) -> list[Row]:
    """Measurement 5's rows, model size by size."""
    rows: list[Row] = []
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
        rows += command_rows(commands, size_bytes, MERGEKIT_FLOOR_SMALL if params < 0.5e9 else MERGEKIT_FLOOR)
    return rows
