"""One run, end to end: validate, build the pools, merge, test, write the outputs.

Run folder (Hydra's output dir):
    .hydra/            the composed config
    metrics.jsonl      one line per generation
    checkpoint/        method state + individuals, for resuming
    results.json       final scores, budget, wall time, config hash
    model/             the chosen model as a Hugging Face folder
    wandb/             W&B files (offline unless configured online)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sae_merging.models.compat import IncompatibleModelsError
from sae_merging.models.io import load_config, load_tokenizer, save_model_folder
from sae_merging.runtime.context import Outcome, RunContext
from sae_merging.runtime.fitness import FitnessEvaluator
from sae_merging.runtime.loop import run_generations
from sae_merging.runtime.store import IndividualStore
from sae_merging.runtime.validation import ConfigError, config_problems, instantiate_checked, pool_problems
from sae_merging.sparsity.measures import SparsityStats, pooled, zero_count
from sae_merging.utils.device import resolve_device
from sae_merging.utils.files import atomic_write_json, stable_hash

RESULTS_FILE = "results.json"


def config_hash(cfg: DictConfig) -> str:
    """A hash of the settings that determine the result (not where outputs go)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("hydra", "progress"):
        data.pop(key, None)
    for node in (data.get("lab"), data.get("model", {}).get("lab"), data.get("task", {}).get("lab")):
        if isinstance(node, dict):
            node.pop("cache_dir", None)
    return stable_hash(data)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Execute the configured method; raises ConfigError / IncompatibleModelsError early."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    finished = _finished(run_dir, cfg)
    if finished is not None:
        return finished
    models = instantiate_checked(cfg.model, "model")
    tasks = instantiate_checked(cfg.task, "task")
    method = instantiate_checked(cfg.method, "method")
    evaluator = instantiate_checked(cfg.evaluator, "evaluator")
    problems = pool_problems(models, tasks, method)
    if problems:
        raise ConfigError(problems)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    _ = models.compatibility  # refuse mismatched models before loading any weights
    reference = models.base or models.experts[0]
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(reference)
    fitness = FitnessEvaluator(evaluator, load_config(reference), tokenizer, models.dtype, device)
    ctx = RunContext(
        models=models,
        tasks=tasks,
        fitness=fitness,
        store=IndividualStore(run_dir / "checkpoint" / "individuals"),
        run_dir=run_dir,
        seed=cfg.seed,
        progress=cfg.get("progress", True),
    )
    logger = instantiate(cfg.logger)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=f"{method.name}-seed{cfg.seed}")
    if hasattr(method, "step"):
        outcome = run_generations(method, ctx, method.state_type, logger.log)
    else:
        outcome = method.run(ctx)
    results = finish(ctx, cfg, method.name, outcome, tokenizer, time.perf_counter() - started)
    logger.finish({f"final/{k}": v for k, v in results["test"].items()})
    return results


def _finished(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The results of this very config if the folder already holds them (a re-launched sweep
    skips its finished runs); results of another config are not silently reused."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if results.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            [f"{path} holds results of another config ({results.get('config_hash')}); use a new run folder"]
        )
    return results


def finish(
    ctx: RunContext, cfg: DictConfig, method: str, outcome: Outcome, tokenizer, seconds: float
) -> dict:
    """Test the chosen individual, save it as a Hugging Face folder, write results.json."""
    tensors = ctx.store.load(outcome.member.ident)
    final_evaluator = (
        instantiate(cfg.final_evaluator) if cfg.get("final_evaluator") else ctx.fitness.evaluator
    )
    ctx.fitness.load_weights(outcome.member.ident, tensors)
    test, test_sizes = {}, {}
    for task in ctx.tasks.tasks:
        examples = ctx.tasks.test_set(task, ctx.seed)
        with ctx.timer.section("test"):
            test[task.name] = final_evaluator.evaluate(ctx.fitness.model, tokenizer, task, examples).accuracy
        test_sizes[task.name] = len(examples)
    opt = outcome.opt_scores.task_accuracy()
    stats = [SparsityStats.of(t) for t in tensors.values()]
    reference = ctx.models.base or ctx.models.experts[0]
    save_model_folder(ctx.run_dir / "model", ctx.complete_vocab(tensors), load_config(reference), tokenizer)
    results = {
        "method": method,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "test": {**test, "mean": sum(test.values()) / len(test)},
        "opt": {**opt, "mean": outcome.opt_scores.mean},
        "test_examples": test_sizes,
        "sparsity": outcome.member.sparsity,
        "zero_fraction": zero_count(pooled(stats)),
        "fitness_evaluations": ctx.fitness.counters.fitness_evaluations,
        "models_scored": ctx.fitness.counters.models_scored,
        "examples_scored": ctx.fitness.counters.examples_scored,
        "chosen": outcome.member.to_json(),
        "details": outcome.details,
        "seconds": {k: round(v, 3) for k, v in ctx.timer.totals.items()},
        "wall_seconds": round(seconds, 2),
    }
    atomic_write_json(ctx.run_dir / RESULTS_FILE, results)
    return results


def summary_lines(results: dict) -> list[str]:
    test = ", ".join(f"{k} {v:.3f}" for k, v in results["test"].items())
    return [
        f"{results['method']} (seed {results['seed']}): test {test}",
        f"  sparsity {results['sparsity']:.3f}, {results['fitness_evaluations']} fitness evaluations, "
        f"{results['examples_scored']} examples scored, {results['wall_seconds']:.0f}s",
    ]


def main(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """The `run.py` entry: clear one-line errors (exit status 2) instead of tracebacks."""
    try:
        results = run(cfg, run_dir)
    except ConfigError as error:
        for line in error.problems:
            print(f"config error: {line}", file=sys.stderr)
        sys.exit(2)
    except (IncompatibleModelsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for line in summary_lines(results):
        print(line)
    return results
