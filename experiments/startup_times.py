"""Start-up of every entry point: import time (`python -X importtime`) and wall time.

    python experiments/startup_times.py [--runs 3]

For each command: the median over runs of the summed cumulative import time of the top-level
imports and of the wall time, its exit status, and which heavy packages (torch, transformers,
lm_eval, wandb) it imported (none, for errors and help). Prints a Markdown table and the load
average before and after (the wall times depend on it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval", "wandb")


def commands(scratch: Path) -> dict[str, list[str]]:
    return {
        "python run.py method.archive_size=1 (a config error)": [
            "run.py",
            "method.archive_size=1",
            f"hydra.run.dir={scratch / 'run'}",
        ],
        "python run.py --help": ["run.py", "--help"],
        "python run.py --cfg job": ["run.py", "--cfg", "job"],
        "python experiments/merge_checkpoints.py --help": ["experiments/merge_checkpoints.py", "--help"],
        "python experiments/merge_checkpoints.py ... --prune 2 (an argument error)": [
            "experiments/merge_checkpoints.py",
            *("--base", str(scratch / "nowhere"), "--experts", "a/b", "c/d"),
            *("--out", str(scratch / "merged"), "--prune", "2"),
        ],
        "python experiments/build_lab.py --help": ["experiments/build_lab.py", "--help"],
        "python experiments/reproduce.py --help": ["experiments/reproduce.py", "--help"],
        "python analysis/tables.py --help": ["analysis/tables.py", "--help"],
        "python analysis/landscape.py --help": ["analysis/landscape.py", "--help"],
        "python experiments/benchmark.py --help": ["experiments/benchmark.py", "--help"],
        "python experiments/gpu_check.py --help": ["experiments/gpu_check.py", "--help"],
        "python experiments/merge_checkpoints.py ... (a real merge, 2 tiny models)": [
            "experiments/merge_checkpoints.py",
            *("--base", str(scratch / "model"), "--experts", str(scratch / "model")),
            *("--out", str(scratch / "merged"), "--threads", "1"),
        ],
    }


def tiny_model(folder: Path) -> None:
    """A one-tensor model folder with a tokenizer, for the merge command's real run."""
    import json

    import torch
    from safetensors.torch import save_file

    from sae_merging.lab.tokenizer import build_tokenizer

    folder.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(8, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "generation_config.json").write_text("{}")
    build_tokenizer(["a b"]).save_pretrained(folder)


def measure(arguments: list[str]) -> tuple[float, float, int, set[str]]:
    """(import seconds, wall seconds, exit status, heavy packages imported) of one run."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *arguments], cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    total, heavy = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, module = line.split("|", 2)
        if cumulative.strip().isdigit() and not module.startswith("  "):
            total += int(cumulative)
        if module.strip().split(".")[0] in HEAVY:
            heavy.add(module.strip().split(".")[0])
    return total / 1e6, wall, done.returncode, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("| command | imports (s) | wall (s) | exit | heavy imports |\n|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as scratch:
        tiny_model(Path(scratch) / "model")
        for name, arguments in commands(Path(scratch)).items():
            samples = [measure(arguments) for _ in range(runs)]
            imports = statistics.median(s[0] for s in samples)
            wall = statistics.median(s[1] for s in samples)
            heavy = ", ".join(sorted(set().union(*(s[3] for s in samples)))) or "none"
            print(f"| `{name}` | {imports:.2f} | {wall:.2f} | {samples[-1][2]} | {heavy} |")
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
