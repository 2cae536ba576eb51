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
or busy machine moves both sides alike. Each measurement is a module of `experiments/bench/`,
whose docstring says what it measures against what:

1. `merge_passes`: task arithmetic and SAE's child against a file copy of one model.
2. `pruning`: global magnitude pruning against one pass over the weights.
3. `evaluators.measure_lab`: the built-in evaluator against lm-eval on the lab.
   `evaluator` (`evaluators.measure_real`): the same on SmolLM2 and the paper's tasks.
4. `generation`: one SAE generation at lab scale, its merge + prune share.
5. `commands`: whole merge commands against mergekit-yaml and cp.
6. `threads`: the thread policy's measurement (a lab training step, 1 thread and every core).

`common` holds the synthetic checkpoints (built once under --workdir) and the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import commands, evaluators, generation, merge_passes, pruning, threads
from bench.common import GB, Row, build_checkpoints, machine, markdown

from sae_merging.utils.threads import apply_threads


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
        print(json.dumps(merge_passes.worker(args.worker, files, out, args.repeat, args.device)))
        return
    only = {int(x) if x.isdigit() else x for x in args.only.split(",")}
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads, CUDA {info['cuda']}, load average {' '.join(f'{x:.2f}' for x in info['load_average'])}, "
        f"loops {info['child_loops']}"
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
        copy_file = merge_passes.copy_file_seconds(files, folder / "copy.safetensors", args.repeat)
    if 1 in only:
        rows += merge_passes.measure(args, copy_file, model_bytes, results)
    if 2 in only:
        rows += pruning.measure(args, files, copy_file, results)
    if 5 in only:
        rows += commands.measure(args, results)
    if 6 in only:
        rows += threads.measure(args, results)
    if 3 in only:
        rows += evaluators.measure_lab(args, results)
    if 4 in only:
        rows += generation.measure(args, results)
    if "evaluator" in only:
        rows += evaluators.measure_real(args, results)
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
