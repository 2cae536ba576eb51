"""The generation loop shared by evolutionary methods: checkpoint, resume, metrics, progress.

After every generation the method's state, the fitness cache and the evaluation counters are
written atomically to `checkpoint/state.json` (individuals are already on disk). Starting a
run in a folder that holds a checkpoint resumes after its last finished generation: the
generation's random draws depend only on (seed, generation), the fitness cache comes back with
the state, so the resumed run computes exactly what an uninterrupted one would.

With an example budget (`budget.examples=N`) the loop ignores the method's own step count and
runs generations until N (individual, example) pairs have been scored (the `examples_scored`
counter), search and final choice together: the search may score N minus what the choice
among the current candidates will cost (`selection_cost`: their validation examples under
`selection=validation`, nothing under the other rules). The scoring request that reaches that
limit scores what fits and stops the search mid-generation; the unfinished generation is
dropped (its scoring stays counted: it was spent) and the method's state goes back to the last
finished one, whose candidates the choice then scores. So every search method's run scores
exactly N examples. (Exactly, when the number of candidates is the same before and after the
last finished generation, as it is for SAE and PSO, and for M2N2 once its archive is full;
an archive that grew in that generation adds its new members' choice cost.) Methods with a
fixed number of steps (a grid of scaling factors) stop at their last step even below N.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from sae_merging.runtime.context import Member, Outcome, RunContext, Sample
from sae_merging.runtime.fitness import BudgetSpent
from sae_merging.runtime.outputs import METRICS_FILE
from sae_merging.runtime.selection import selection_cost
from sae_merging.utils.files import atomic_write_json

CHECKPOINT_FILE = "state.json"


class Evolutionary(Protocol):
    name: str
    steps: int  # generations without a budget

    def initialize(self, ctx: RunContext) -> Any: ...

    def step(self, ctx: RunContext, state: Any, generation: int) -> Any: ...

    def candidates(self, ctx: RunContext, state: Any) -> tuple[list[Member], Sample]: ...

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
    metrics = MetricsFile(ctx.run_dir / METRICS_FILE)
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
    while (limit := _search_limit(method, ctx, state, budget)) is None or (
        ctx.fitness.counters.examples_scored < limit
    ):
        generation = state.generation + 1
        if budget is None or getattr(method, "fixed_steps", False):
            if generation > method.steps:
                break
        before = ctx.fitness.counters.examples_scored
        ctx.fitness.limit = limit
        try:
            state = method.step(ctx, state, generation)
        except BudgetSpent:
            state = _last_finished(ctx, state_type, checkpoint)
            break
        finally:
            ctx.fitness.limit = None
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


def _search_limit(method: Evolutionary, ctx: RunContext, state, budget: int | None) -> int | None:
    """What the search may have scored by the end of the next generation: the budget less what
    choosing among the current candidates will score (None without a budget)."""
    if budget is None:
        return None
    limit = budget - selection_cost(ctx, *method.candidates(ctx, state))
    if state.generation == 0 and ctx.fitness.counters.examples_scored > limit:
        raise ValueError(
            f"budget.examples={budget} is below what generation 0 and the final choice alone score "
            f"({budget - limit + ctx.fitness.counters.examples_scored}); raise it"
        )
    return limit


def _last_finished(ctx: RunContext, state_type: type, checkpoint: Path):
    """The state of the last finished generation, after the budget stopped one midway: the
    unfinished generation's individuals are deleted; the scores its requests computed for the
    finished state's members stay cached (individuals never change), beside the checkpoint's
    (which hold those of members it had retired, members again)."""
    saved = json.loads(checkpoint.read_text())
    state = state_type.from_json(saved["state"])
    keep = {m.ident for m in state.members}
    cache = {ident: dict(results) for ident, results in saved["fitness"]["cache"].items()}
    for ident, results in ctx.fitness.cache.items():
        if ident in keep:
            cache.setdefault(ident, {}).update(results)
    ctx.fitness.restore({"cache": cache, "counters": vars(ctx.fitness.counters)})
    ctx.retired.clear()
    _drop_orphans(ctx, state)
    # a resumed run (and experiments/selection_study.py) then sees what the choice sees
    atomic_write_json(checkpoint, {"state": state.to_json(), "fitness": ctx.fitness.state()})
    return state


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
