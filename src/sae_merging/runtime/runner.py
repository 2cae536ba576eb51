"""One run, end to end: validate, build the pools, merge, test, write the outputs.

Run folder (Hydra's output dir):
    .hydra/            the composed config
    metrics.jsonl      one line per generation
    checkpoint/        method state + individuals, for resuming
    results.json       final scores, budget, selection rule and objective, wall time, config hash
    test_items.jsonl   the chosen model's correctness on every test item (for paired statistics)
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
from sae_merging.runtime.loop import CHECKPOINT_FILE, run_generations
from sae_merging.runtime.store import IndividualStore
from sae_merging.runtime.validation import ConfigError, config_problems, instantiate_checked, pool_problems
from sae_merging.sparsity.measures import SparsityStats, pooled, zero_count
from sae_merging.utils.device import resolve_device
from sae_merging.utils.files import atomic_write_json, atomic_write_text, stable_hash

RESULTS_FILE = "results.json"
TEST_ITEMS_FILE = "test_items.jsonl"


def config_hash(cfg: DictConfig) -> str:
    """A hash of the settings that determine the result (not where outputs go)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("hydra", "progress", "tables_dir"):
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
    method, ctx, tokenizer = prepare(cfg, run_dir)
    logger = instantiate(cfg.logger)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=f"{method.name}-seed{cfg.seed}")
    summary: dict[str, Any] = {}
    try:  # the logger is finished however the run ends (an interrupted W&B run stays resumable)
        if hasattr(method, "step"):
            outcome = run_generations(method, ctx, method.state_type, logger.log, budget_examples(cfg))
        else:
            outcome = method.run(ctx)
        results = finish(ctx, cfg, method.name, outcome, tokenizer, time.perf_counter() - started)
        logger.log_outputs(run_dir / RESULTS_FILE, run_dir / "model")
        summary = {f"final/{k}": v for k, v in results["test"].items()}
    finally:
        logger.finish(summary)
    return results


def prepare(cfg: DictConfig, run_dir: Path):
    """The method, its RunContext and the tokenizer of a validated config (raises ConfigError
    for what only the instantiated pools can tell)."""
    models = instantiate_checked(cfg.model, "model")
    tasks = instantiate_checked(cfg.task, "task")
    method = instantiate_checked(cfg.method, "method")
    evaluator = instantiate_checked(cfg.evaluator, "evaluator")
    problems = pool_problems(models, tasks, method)
    if cfg.get("selection") == "validation" and not tasks.has_validation:
        problems.append(
            "selection=validation: the task pool holds out no validation set; set "
            "task.validation_size (e.g. {TASK: 200}) or choose selection=all_draws or last_draw"
        )
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
        selection=cfg.get("selection") or "last_draw",
    )
    return method, ctx, tokenizer


def budget_examples(cfg: DictConfig) -> int | None:
    """`budget.examples`: the search stops once this many (individual, example) pairs were
    scored; None keeps each method's own step count."""
    value = OmegaConf.select(cfg, "budget.examples", default=None)
    return None if value is None else int(value)


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
    test, test_sizes, items = test_scores(ctx, outcome.member.ident, tensors, final_evaluator, tokenizer)
    atomic_write_text(ctx.run_dir / TEST_ITEMS_FILE, "".join(json.dumps(row) + "\n" for row in items))
    opt = outcome.opt_scores.task_accuracy()
    stats = [SparsityStats.of(t) for t in tensors.values()]
    reference = ctx.models.base or ctx.models.experts[0]
    save_model_folder(ctx.run_dir / "model", ctx.complete_vocab(tensors), load_config(reference), tokenizer)
    results = {
        "method": method,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "test": {**test, "mean": sum(test.values()) / len(test)},
        "selection": ctx.selection,
        "objective": outcome.opt_scores.mean,  # what run.py returns to Hydra: never a test score
        "opt": {**opt, "mean": outcome.opt_scores.mean},
        "budget": {"examples": budget_examples(cfg)},
        "test_examples": test_sizes,
        "sparsity": outcome.member.sparsity,
        "zero_fraction": zero_count(pooled(stats)),
        "fitness_evaluations": ctx.fitness.counters.fitness_evaluations,
        "models_scored": ctx.fitness.counters.models_scored,
        "examples_scored": ctx.fitness.counters.examples_scored,
        "selection_examples_scored": outcome.selection_examples,
        "generations": _generations(ctx),
        "chosen": outcome.member.to_json(),
        "details": outcome.details,
        "seconds": {k: round(v, 3) for k, v in ctx.timer.totals.items()},
        "wall_seconds": round(seconds, 2),
    }
    atomic_write_json(ctx.run_dir / RESULTS_FILE, results)
    return results


def _generations(ctx: RunContext) -> int | None:
    """The last finished generation (from the checkpoint), None for a method without a loop."""
    path = ctx.run_dir / "checkpoint" / CHECKPOINT_FILE
    return json.loads(path.read_text())["state"]["generation"] if path.is_file() else None


def test_scores(ctx: RunContext, ident: str, tensors, evaluator, tokenizer) -> tuple[dict, dict, list]:
    """Test accuracy per task, test set sizes and per-item rows of one individual: the only
    place test data are scored."""
    ctx.fitness.load_weights(ident, tensors)
    test, sizes, items = {}, {}, []
    for task in ctx.tasks.tasks:
        examples = ctx.tasks.test_set(task, ctx.seed)
        with ctx.timer.section("test"):
            scored = evaluator.evaluate(ctx.fitness.model, tokenizer, task, examples)
        test[task.name] = scored.accuracy
        sizes[task.name] = len(examples)
        items += [
            {"task": task.name, "uid": u, "correct": bool(c)} for u, c in zip(scored.uids, scored.correct)
        ]
    return test, sizes, items


def summary_lines(results: dict) -> list[str]:
    test = ", ".join(f"{k} {v:.3f}" for k, v in results["test"].items())
    return [
        f"{results['method']} (seed {results['seed']}): test {test}",
        f"  chosen by {results['selection']}: objective {results['objective']:.3f}",
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
