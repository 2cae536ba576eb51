"""The generation loop shared by evolutionary methods: checkpoint, resume, metrics, progress.

After every generation the method's state, the fitness cache and the evaluation counters are
written atomically to `checkpoint/state.json` (individuals are already on disk). Starting a
run in a folder that holds a checkpoint resumes after its last finished generation: the
generation's random draws depend only on (seed, generation), the fitness cache comes back with
the state, so the resumed run computes exactly what an uninterrupted one would.

With an example budget (`budget.examples=N`) the loop ignores the method's own step count and
runs generations until N (individual, example) pairs have been scored (the `examples_scored`
counter), finishing the generation that crosses N: every search method then spends the same
budget, give or take one generation. Methods with a fixed number of steps (a grid of scaling
factors) stop at their last step even below N.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from sae_merging.runtime.context import Outcome, RunContext
from sae_merging.utils.files import atomic_write_json

CHECKPOINT_FILE = "state.json"


class Evolutionary(Protocol):
    name: str
    steps: int  # generations without a budget

    def initialize(self, ctx: RunContext) -> Any: ...

    def step(self, ctx: RunContext, state: Any, generation: int) -> Any: ...

    def best(self, ctx: RunContext, state: Any) -> Outcome: ...


class MetricsFile:
    """`metrics.jsonl`: one JSON line per generation, kept consistent with the checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, generation: int) -> None:
        """Drop lines of generations that the checkpoint does not hold (an interrupted one)."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["generation"] <= generation]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")


def run_generations(
    method: Evolutionary,
    ctx: RunContext,
    state_type: type,
    log: Callable[[dict], None],
    budget: int | None = None,
) -> Outcome:
    """Run `method` from generation 0 (or from the checkpoint) to `method.steps`, or, with a
    `budget`, until `budget` examples have been scored (see the module docstring)."""
    checkpoint = ctx.run_dir / "checkpoint" / CHECKPOINT_FILE
    metrics = MetricsFile(ctx.run_dir / "metrics.jsonl")
    if checkpoint.is_file():
        saved = json.loads(checkpoint.read_text())
        state = state_type.from_json(saved["state"])
        ctx.fitness.restore(saved["fitness"])
        metrics.truncate_after(state.generation)
        _drop_orphans(ctx, state)
    else:
        metrics.truncate_after(-1)
        state = method.initialize(ctx)
        _finish_generation(ctx, state, checkpoint, metrics, log, 0)
    bar = tqdm(
        total=method.steps if budget is None else None,
        initial=state.generation,
        desc=f"{method.name} generations",
        disable=not ctx.progress,
        dynamic_ncols=True,
    )
    while _continues(method, ctx, state.generation + 1, budget):
        generation = state.generation + 1
        before = ctx.fitness.counters.examples_scored
        state = method.step(ctx, state, generation)
        if budget is not None and ctx.fitness.counters.examples_scored == before:
            raise RuntimeError(
                f"{method.name} generation {generation} scored no new example: budget.examples={budget} "
                "would never be reached"
            )
        record = _finish_generation(ctx, state, checkpoint, metrics, log, generation)
        bar.set_postfix(best=f"{record.get('best/score', 0):.3f}", evals=record["evaluations"])
        bar.update()
    bar.close()
    return method.best(ctx, state)


def _continues(method: Evolutionary, ctx: RunContext, generation: int, budget: int | None) -> bool:
    """Whether generation `generation` runs: within the method's steps (no budget, or a method
    with a fixed number of steps), and, under a budget, while it is not spent."""
    if budget is None or getattr(method, "fixed_steps", False):
        if generation > method.steps:
            return False
    return budget is None or ctx.fitness.counters.examples_scored < budget


def _finish_generation(ctx, state, checkpoint: Path, metrics: MetricsFile, log, generation: int) -> dict:
    """Checkpoint first, then delete retired individuals, then log: whatever is interrupted,
    the checkpoint on disk always points at individuals that exist."""
    atomic_write_json(checkpoint, {"state": state.to_json(), "fitness": ctx.fitness.state()})
    for ident in ctx.retired:
        ctx.store.delete(ident)
    ctx.retired.clear()
    seconds = ctx.timer.take()
    record = {
        "generation": generation,
        **state.metrics,
        "evaluations": ctx.fitness.counters.fitness_evaluations,
        "models_scored": ctx.fitness.counters.models_scored,
        "examples_scored": ctx.fitness.counters.examples_scored,
        **{f"seconds/{name}": round(value, 4) for name, value in sorted(seconds.items())},
        "time": time.time(),
    }
    metrics.append(record)
    log(record)
    return record


def _drop_orphans(ctx: RunContext, state) -> None:
    """Individuals written by an interrupted generation are not in the checkpoint: remove them."""
    keep = {m.ident for m in state.members}
    for ident in ctx.store.idents():
        if ident not in keep:
            ctx.store.delete(ident)
