"""The generation loop shared by evolutionary methods: checkpoint, resume, metrics, progress.

After every generation the method's state, the fitness cache, the evaluation counters and the
metrics records are written atomically to `checkpoint/state.json` with the checksums of its
individuals (already on disk; see `runtime.checkpoint`). Starting a run in a folder that holds
a checkpoint (verified by the runner first) resumes after its last finished generation: the
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

from sae_merging.runtime import checkpoint as checkpoints
from sae_merging.runtime.context import Member, Outcome, RunContext, Sample
from sae_merging.runtime.fitness import BudgetSpent
from sae_merging.runtime.outputs import METRICS_FILE
from sae_merging.runtime.selection import selection_cost
from sae_merging.utils.files import atomic_write_text
from sae_merging.utils.settings import ConfigError

CHECKPOINT_FILE = checkpoints.STATE_FILE


class Evolutionary(Protocol):
    name: str
    steps: int  # generations without a budget

    def initialize(self, ctx: RunContext) -> Any: ...

    def step(self, ctx: RunContext, state: Any, generation: int) -> Any: ...

    def candidates(self, ctx: RunContext, state: Any) -> tuple[list[Member], Sample]: ...

    def best(self, ctx: RunContext, state: Any) -> Outcome: ...


def _line(record: dict) -> str:
    return json.dumps(record, allow_nan=False) + "\n"


class MetricsFile:
    """`metrics.jsonl`: one JSON line per generation. The checkpoint holds every record, so the
    file is rewritten from it on resuming: a missing, cut or edited file (or the line of an
    interrupted generation) never survives, and no finished generation's line is lost."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rebuild(self, records: list[dict]) -> bool:
        """Make the file hold exactly `records`; True when it held something else."""
        text = "".join(_line(record) for record in records)
        if self.path.is_file() and self.path.read_text(errors="replace") == text:
            return False
        changed = self.path.is_file() or bool(records)
        atomic_write_text(self.path, text)
        return changed

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(_line(record))


class Checkpointer:
    """Writes `checkpoint/state.json` after each generation: the state, the fitness cache, all
    metrics records, the run's config record and its individuals' checksums."""

    def __init__(self, ctx: RunContext, run: dict, resumed: dict | None) -> None:
        self.ctx, self.run = ctx, run
        self.records: list[dict] = list((resumed or {}).get("metrics", []))
        self.forced_from = list((resumed or {}).get("forced_from", []))

    def save(self, state, new_generation: bool = True) -> None:
        files = {m.ident: self.ctx.store.digest(m.ident) for m in state.members}
        body = {
            "state": state.to_json(),
            "fitness": self.ctx.fitness.state(),
            "metrics": self.records,
            "run": self.run,
            "files": files,
        }
        if self.forced_from:
            body["forced_from"] = self.forced_from
        checkpoints.write(self.ctx.run_dir, body, new_generation)


def run_generations(
    method: Evolutionary,
    ctx: RunContext,
    state_type: type,
    log: Callable[[dict], None],
    budget: int | None = None,
    resumed: dict | None = None,
    run: dict | None = None,
) -> Outcome:
    """Run `method` from generation 0 (or from the verified checkpoint body `resumed`) to
    `method.steps`, or, with a `budget`, until `budget` examples have been scored (see the
    module docstring). `run`: the run's record the checkpoint keeps (`checkpoint.run_record`)."""
    checkpoint = ctx.run_dir / "checkpoint" / CHECKPOINT_FILE
    metrics = MetricsFile(ctx.run_dir / METRICS_FILE)
    writer = Checkpointer(ctx, run or {}, resumed)
    if resumed is not None:
        try:
            state = state_type.from_json(resumed["state"])
        except (KeyError, TypeError, ValueError) as error:
            raise checkpoints.CheckpointError(
                f"{checkpoint}: its state is not one {method.name} can resume ({error!r} missing or wrong); "
                "choose a new folder"
            ) from None
        ctx.fitness.restore(resumed["fitness"])
        ctx.store.digests.update(resumed.get("files", {}))
        if metrics.rebuild(writer.records):
            print(f"note: {metrics.path} rebuilt from the checkpoint ({len(writer.records)} generations)")
        _drop_orphans(ctx, state, _previous_members(ctx))
    else:
        metrics.rebuild([])
        state = method.initialize(ctx)
        _finish_generation(ctx, state, writer, metrics, log, 0)
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
            state = _last_finished(ctx, state_type, checkpoint, writer)
            break
        finally:
            ctx.fitness.limit = None
        if budget is not None and ctx.fitness.counters.examples_scored == before:
            raise ConfigError(
                [
                    f"{method.name} generation {generation} scored no new example: budget.examples={budget} "
                    "would never be reached"
                ]
            )
        record = _finish_generation(ctx, state, writer, metrics, log, generation)
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
        raise ConfigError(
            [
                f"budget.examples={budget}: is below what generation 0 and the final choice alone score "
                f"({budget - limit + ctx.fitness.counters.examples_scored}); raise it"
            ]
        )
    return limit


def _last_finished(ctx: RunContext, state_type: type, checkpoint: Path, writer: Checkpointer):
    """The state of the last finished generation, after the budget stopped one midway: the
    unfinished generation's individuals are deleted; the scores its requests computed for the
    finished state's members stay cached (individuals never change), beside the checkpoint's
    (which hold those of members it had retired, members again)."""
    saved = checkpoints.read(checkpoint)
    state = state_type.from_json(saved["state"])
    keep = {m.ident for m in state.members}
    cache = {ident: dict(results) for ident, results in saved["fitness"]["cache"].items()}
    for ident, results in ctx.fitness.cache.items():
        if ident in keep:
            cache.setdefault(ident, {}).update(results)
    ctx.fitness.restore({"cache": cache, "counters": vars(ctx.fitness.counters)})
    ctx.retired.clear()
    _drop_orphans(ctx, state, _previous_members(ctx))
    # a resumed run (and experiments/selection_study.py) then sees what the choice sees
    writer.save(state, new_generation=False)
    return state


def _finish_generation(ctx, state, writer: Checkpointer, metrics: MetricsFile, log, generation: int) -> dict:
    """Checkpoint first (its metrics record included), then delete the individuals neither it
    nor the previous checkpoint needs, then log: whatever is interrupted, both checkpoints on
    disk point at individuals that exist."""
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
    writer.records.append(record)
    writer.save(state)
    previous = _previous_members(ctx)
    for ident in ctx.store.idents():
        if ident not in previous and ident not in {m.ident for m in state.members}:
            ctx.store.delete(ident)
    ctx.retired.clear()
    metrics.append(record)
    log(record)
    return record


def _previous_members(ctx: RunContext) -> set[str]:
    """The individuals the previous generation's checkpoint refers to (kept one generation
    longer, so that it can be resumed from)."""
    path = ctx.run_dir / checkpoints.CHECKPOINT_DIR / checkpoints.PREVIOUS_FILE
    try:
        return set(json.loads(path.read_text()).get("files", {})) if path.is_file() else set()
    except (OSError, ValueError):
        return set()


def _drop_orphans(ctx: RunContext, state, also_keep: set[str] = frozenset()) -> None:
    """Individuals written by an interrupted generation are not in the checkpoint: remove them."""
    keep = {m.ident for m in state.members} | set(also_keep)
    for ident in ctx.store.idents():
        if ident not in keep:
            ctx.store.delete(ident)
