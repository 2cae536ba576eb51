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

from sae_merging.models.io import load_config, load_tokenizer, save_model_folder
from sae_merging.runtime import checkpoint as checkpoints
from sae_merging.runtime.card import model_card
from sae_merging.runtime.context import Outcome, RunContext
from sae_merging.runtime.fitness import FitnessEvaluator
from sae_merging.runtime.loop import CHECKPOINT_FILE, run_search
from sae_merging.runtime.outputs import RESULTS_FILE, TEST_ITEMS_FILE
from sae_merging.runtime.preflight import Plan, RunSettings, device_problem, keys_without_results, preflight
from sae_merging.runtime.store import IndividualStore
from sae_merging.sparsity.measures import SparsityStats, pooled, zero_count
from sae_merging.utils.device import resolve_device
from sae_merging.utils.files import atomic_write_json, atomic_write_text, stable_hash
from sae_merging.utils.locks import FolderLock
from sae_merging.utils.paths import remove_leftovers
from sae_merging.utils.settings import ConfigError, InputError
from sae_merging.utils.threads import AUTO, apply_threads

ELAPSED_FILE = "checkpoint/elapsed.json"


class RunClock:
    """Wall time of a run over all its processes: an interrupted process leaves its share in
    `checkpoint/elapsed.json` (updated every generation), which the resumed one adds to."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ELAPSED_FILE
        self.before = self._read() if self.path.is_file() else 0.0
        self.started = time.perf_counter()

    def _read(self) -> float:
        try:
            seconds = json.loads(self.path.read_text())["seconds"]
            if isinstance(seconds, int | float) and seconds >= 0:
                return float(seconds)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            pass
        raise checkpoints.CheckpointError(
            f"{self.path}: cannot be read; delete it to resume (the run's wall time then counts from now)"
        )

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def save(self) -> None:
        atomic_write_json(self.path, {"seconds": round(self.seconds, 3)})


def results_config(cfg: DictConfig) -> dict:
    """The settings that determine the result (not where outputs go, nor how to resume)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("hydra", *keys_without_results()):
        data.pop(key, None)
    for node in (data.get("lab"), data.get("model", {}).get("lab"), data.get("task", {}).get("lab")):
        if isinstance(node, dict):
            node.pop("cache_dir", None)
    return data


def config_hash(cfg: DictConfig) -> str:
    """A hash of `results_config`: equal hashes, equal results."""
    return stable_hash(results_config(cfg))


def run(cfg: DictConfig, run_dir: str | Path, plan: Plan | None = None) -> dict[str, Any]:
    """Execute the configured method; every bad input is refused (ConfigError,
    IncompatibleModelsError) before any model is loaded."""
    run_dir = Path(run_dir)
    plan = plan or preflight(cfg, run_dir)
    with FolderLock(run_dir):  # one writer per run folder; refused naming the holder's PID
        return _locked_run(cfg, run_dir, plan)


def _locked_run(cfg: DictConfig, run_dir: Path, plan: Plan) -> dict[str, Any]:
    folder = run_dir / checkpoints.CHECKPOINT_DIR
    remove_leftovers([run_dir, folder, folder / checkpoints.INDIVIDUALS_DIR])  # of killed writes
    finished = _finished(run_dir, cfg)
    if finished is not None:
        return finished
    # the checkpoint is verified (files, config, method) before any model is loaded
    resumed = checkpoints.resume_from(run_dir, results_config(cfg), cfg.get("resume", True))
    evaluators = [plan.objects.get("evaluator"), plan.run.final_evaluator]
    if problem := device_problem(cfg.device, evaluators):
        raise ConfigError([problem])
    clock = RunClock(run_dir)
    try:
        return _run(cfg, run_dir, clock, resumed)
    except InputError:
        raise
    except BaseException:  # interrupted (or failed): keep this process's share of the wall time
        try:
            clock.save()
        except OSError:  # a full disk: the run's own error says so
            pass
        raise


def _run(cfg: DictConfig, run_dir: Path, clock: RunClock, resumed: dict | None = None) -> dict[str, Any]:
    method, ctx, tokenizer = prepare(cfg, run_dir)
    logger = instantiate(cfg.logger)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=f"{method.name}-seed{cfg.seed}")

    def log(record: dict) -> None:
        logger.log(record)
        clock.save()

    summary: dict[str, Any] = {}
    try:  # the logger is finished however the run ends (an interrupted W&B run stays resumable)
        record = checkpoints.run_record(results_config(cfg))
        outcome = run_search(method, ctx, log, budget_examples(cfg), resumed, record)
        results = finish(ctx, cfg, method.name, outcome, tokenizer, clock, resumed)
        logger.log_outputs(run_dir / RESULTS_FILE, run_dir / "model")
        summary = {f"final/{k}": v for k, v in results["test"].items()}
    finally:
        logger.finish(summary)
    return results


def prepare(cfg: DictConfig, run_dir: Path):
    """The method, its RunContext and the tokenizer of a checked config (`preflight`); raises
    IncompatibleModelsError for models whose headers differ."""
    apply_threads(cfg.get("threads", AUTO))  # before any work: the lab build runs in `models`
    models = instantiate_checked(cfg.model, "model")
    tasks = instantiate_checked(cfg.task, "task")
    method = instantiate_checked(cfg.method, "method")
    evaluator = instantiate_checked(cfg.evaluator, "evaluator")
    torch.manual_seed(cfg.seed)
    _ = models.compatibility  # refuse mismatched models before loading any weights
    reference = models.base_ref or models.expert_refs[0]
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
        selection=cfg.get("selection", RunSettings.selection),
    )
    for line in few_choice_items(ctx):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return method, ctx, tokenizer


FEW_CHOICE_ITEMS = 10  # below this many validation items per task, the final choice is mostly ties


def few_choice_items(ctx: RunContext) -> list[str]:
    """Tasks whose validation set (what selection=validation chooses on) is too small to tell
    candidates apart: with a handful of items most candidates tie and the rule's tie-break, not
    accuracy, makes the choice."""
    if ctx.selection != "validation":
        return []
    lines = []
    for task in ctx.tasks.tasks:
        n = len(ctx.tasks.validation_set(task, ctx.seed))
        if n < FEW_CHOICE_ITEMS:
            lines.append(
                f"task {task.name}: the final choice scores {n} validation item(s) (task.validation_size "
                f"of {len(task.split('opt'))} opt items): candidates will mostly tie; "
                f"{FEW_CHOICE_ITEMS} or more tell them apart"
            )
    return lines


def budget_examples(cfg: DictConfig) -> int | None:
    """`budget.examples`: the search stops once this many (individual, example) pairs were
    scored; None keeps each method's own step count."""
    value = OmegaConf.select(cfg, "budget.examples", default=None)
    return None if value is None else int(value)


def instantiate_checked(node: DictConfig, key: str):
    """`hydra.utils.instantiate`, turning a constructor's ValueError (a bad setting of a class
    without settings of ours) into a ConfigError line instead of a traceback."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__
        if not isinstance(cause, ValueError | TypeError):
            raise
        message = str(cause)
        raise ConfigError([message if message.startswith(key) else f"{key}: {message}"]) from error


def _finished(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The results of this very config if the folder already holds them (a re-launched sweep
    skips its finished runs); results of another config are not silently reused."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
        results.get("config_hash")
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise checkpoints.CheckpointError(
            f"{path}: cannot be read; move it away to redo the run's last step from its checkpoint"
        ) from None
    if results.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            [
                f"{path} holds results of another config ({results.get('config_hash')}); use a new run "
                "folder (resume=false starts one beside it)"
            ]
        )
    return results


def finish(
    ctx: RunContext,
    cfg: DictConfig,
    method: str,
    outcome: Outcome,
    tokenizer,
    clock: RunClock,
    resumed: dict | None = None,
) -> dict:
    """Test the chosen individual, save it as a Hugging Face folder, write results.json."""
    tensors = ctx.store.open(outcome.member.ident)  # read tensor by tensor: never held whole
    refuse_non_finite(tensors, outcome.member.ident)
    final_evaluator = (
        instantiate(cfg.final_evaluator) if cfg.get("final_evaluator") else ctx.fitness.evaluator
    )
    test, test_sizes, items = test_scores(ctx, outcome.member.ident, tensors, final_evaluator, tokenizer)
    atomic_write_text(
        ctx.run_dir / TEST_ITEMS_FILE, "".join(json.dumps(row, allow_nan=False) + "\n" for row in items)
    )
    opt = outcome.opt_scores.task_accuracy()
    # zeros only (what zero_fraction reads), counted in place: `SparsityStats.of` makes float32
    # copies of each tensor, several times the largest tensor (the embedding) in transient memory
    stats = [SparsityStats.counts(t) for t in tensors.values()]
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
        "threads": torch.get_num_threads(),
    }
    if forced := (resumed or {}).get("forced_from"):  # resume=force: the result mixes configs
        results["resumed_from_other_configs"] = forced
    reference = ctx.models.base_ref or ctx.models.expert_refs[0]
    card = model_card(
        method,
        str(reference) if ctx.models.base else None,
        [str(e) for e in ctx.models.expert_refs],
        OmegaConf.to_container(cfg, resolve=True),
        results,
    )
    with ctx.timer.section("save"):
        save_model_folder(
            ctx.run_dir / "model",
            ctx.complete_vocab(tensors),
            load_config(reference),
            tokenizer,
            source=reference,
            extra_files={"README.md": card},
        )
    results["seconds"] = {k: round(v, 3) for k, v in ctx.timer.totals.items()}
    results["wall_seconds"] = round(clock.seconds, 2)  # the save included
    atomic_write_json(ctx.run_dir / RESULTS_FILE, results)
    return results


def _generations(ctx: RunContext) -> int | None:
    """The last finished generation (from the checkpoint)."""
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


class NonFiniteModelError(InputError):
    """The chosen model holds NaN or inf: it is not saved (its settings let the merge diverge)."""


def refuse_non_finite(tensors, ident: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteModelError(
                f"the chosen model {ident} has {bad} non-finite weights in {name!r} (of {tensor.numel()}); "
                "nothing was saved: check the method's numeric settings"
            )


def summary_lines(results: dict) -> list[str]:
    test = ", ".join(f"{k} {v:.3f}" for k, v in results["test"].items())
    return [
        f"{results['method']} (seed {results['seed']}): test {test}",
        f"  chosen by {results['selection']}: objective {results['objective']:.3f}",
        f"  sparsity {results['sparsity']:.3f}, {results['fitness_evaluations']} fitness evaluations, "
        f"{results['examples_scored']} examples scored, {results['wall_seconds']:.0f}s",
    ]
