"""The loop every method runs in: ask, make, score, tell; checkpoint, resume, metrics, choice.

A method (`sae_merging.methods.base`) asks for candidates in rounds; the loop makes each one
(its recipe), stores it, scores it (`ctx.score`, cached per example) and tells the method the
scores; a method marks a generation finished by setting its state's generation. After every
finished generation the state, the fitness cache, the evaluation counters and the metrics
records are written atomically to `checkpoint/state.json` with the checksums of its
individuals (see `runtime.checkpoint`), the individuals no checkpoint needs any more are
deleted, and the generation's record goes to metrics.jsonl and the logger. Starting a run in a
folder that holds a checkpoint (verified by the runner first) resumes after its last finished
generation: draws depend only on (seed, generation), the fitness cache comes back with the
state, so the resumed run computes exactly what an uninterrupted one would.

With an example budget (`budget.examples=N`) the loop ignores the method's step count (unless
it has `fixed_steps`, a grid) and prices what it is asked before doing it: re-scoring
individuals costs their uncached examples (all of them or none are scored), a new candidate its
sample's examples. It keeps in reserve what the final choice will score (`selection_cost` of
the current candidates, plus the choice's examples for every new candidate that may join them:
all of it while the method's `capacity` leaves places open, then only what it costs beyond the
cheapest current candidate, whose place it would take). Generation 0 must fit whole: a budget
below it is refused before anything is scored, naming the budget it needs. Candidates are made
in order while their price fits; the method is told those that were (a prefix) and asked
nothing more: the search is over, with at most N examples scored, search and choice together,
and less than one candidate's price left unspent (plus the reserve for the candidates of that
round that did not join). A generation the method finished with what it was told (SAE's
children, PSO's moves: a round told in part) is recorded as usual; one left unfinished (M2N2
between its children) writes no metrics line. Either way the checkpoint marks the search spent,
so a resumed run goes straight to the choice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from sae_merging.methods.base import Method
from sae_merging.runtime import checkpoint as checkpoints
from sae_merging.runtime.context import Ask, Outcome, RunContext, Sample, Told
from sae_merging.runtime.outputs import METRICS_FILE
from sae_merging.runtime.selection import choice_costs, choice_sample, select, selection_cost
from sae_merging.utils.files import atomic_write_text
from sae_merging.utils.settings import ConfigError

CHECKPOINT_FILE = checkpoints.STATE_FILE
SPENT = "budget_spent"  # the checkpoint's mark of a search the budget ended


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

    def save(self, state, new_generation: bool = True, spent: bool = False) -> None:
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
        if spent:
            body[SPENT] = True
        checkpoints.write(self.ctx.run_dir, body, new_generation)


class Budget:
    """The example budget of a search (None: unlimited): prices a round before it runs."""

    def __init__(self, ctx: RunContext, method: Method, examples: int | None) -> None:
        self.ctx, self.method, self.examples = ctx, method, examples

    def room(self, state) -> float:
        """What the search may still score: the budget less what is scored and what the final
        choice among the current candidates will score."""
        if self.examples is None:
            return float("inf")
        reserve = selection_cost(self.ctx, *self.method.candidates(self.ctx, state))
        return self.examples - self.ctx.fitness.counters.examples_scored - reserve

    def uncached(self, ident: str, sample: Sample) -> int:
        """The examples of `sample` scoring `ident` computes (0 without a budget: not priced)."""
        return 0 if self.examples is None else self.ctx.fitness.uncached(ident, sample)

    def seats(self, state) -> tuple[int | None, int | None]:
        """(open places among the final choice's candidates, None: no limit; the smallest choice
        cost of a current candidate, None: none). A newcomer to a full set (an archive, a swarm's personal
        bests) takes a member's place, so it adds at most its own choice cost less that one."""
        capacity = self.method.capacity(state)
        if self.examples is None or capacity is None:
            return None, 0
        costs = choice_costs(self.ctx, *self.method.candidates(self.ctx, state))
        return max(0, capacity - len(costs)), min(costs, default=None)

    def joining(self, state, sample: Sample) -> int:
        """What choosing among the candidates costs more for a new one scored on `sample`: the
        examples of the choice (the validation set, or the current candidates' last draw)
        outside `sample`. 0 without a budget."""
        if self.examples is None:
            return 0
        inside = {e.uid for _, examples in sample.values() for e in examples}
        chosen_on = choice_sample(self.ctx, self.method.candidates(self.ctx, state)[1])
        return sum(e.uid not in inside for _, examples in chosen_on.values() for e in examples)


def run_search(
    method: Method,
    ctx: RunContext,
    log: Callable[[dict], None],
    budget: int | None = None,
    resumed: dict | None = None,
    run: dict | None = None,
) -> Outcome:
    """Run `method` from the start (or from the verified checkpoint body `resumed`) to
    generation `method.steps`, or, with a `budget`, until the next candidate would not fit
    (see the module docstring); then choose among its candidates (`selection=`). `run`: the
    run's record the checkpoint keeps (`checkpoint.run_record`)."""
    metrics = MetricsFile(ctx.run_dir / METRICS_FILE)
    writer = Checkpointer(ctx, run or {}, resumed)
    pricing = Budget(ctx, method, budget)
    spent = False
    if resumed is not None:
        state = _restored(method, ctx, resumed)
        spent = bool(resumed.get(SPENT))
        if metrics.rebuild(writer.records):
            print(f"note: {metrics.path} rebuilt from the checkpoint ({len(writer.records)} generations)")
        _drop_orphans(ctx, state, _previous_members(ctx))
    else:
        metrics.rebuild([])
        state = method.init(ctx)
    bar = tqdm(
        total=method.steps + 1 if budget is None or method.fixed_steps else None,
        initial=state.generation + 1,
        desc=f"{method.name} generations",
        disable=not ctx.progress,
        dynamic_ncols=True,
    )
    while not spent:
        generation = state.generation + 1
        if (budget is None or method.fixed_steps) and generation > method.steps:
            break
        before = ctx.fitness.counters.examples_scored
        state, spent = run_generation(method, ctx, state, generation, pricing)  # (generation 0: whole)
        if state.generation < generation:  # cut short before the method finished it: no line
            _forget_others(ctx, state)
            writer.save(state, new_generation=False, spent=True)  # a resumed run goes to the choice
            break
        if (
            not spent
            and budget is not None
            and generation > 0
            and ctx.fitness.counters.examples_scored == before
        ):
            raise ConfigError(
                [
                    f"{method.name} generation {generation} scored no new example: budget.examples={budget} "
                    "would never be reached"
                ]
            )
        record = _finish_generation(ctx, state, writer, metrics, log, generation, spent)
        bar.set_postfix(best=f"{record.get('best/score', 0):.3f}", evals=record["evaluations"])
        bar.update()
    bar.close()
    return choose(method, ctx, state)


def choose(method: Method, ctx: RunContext, state) -> Outcome:
    """The final choice: the method's candidates compared by the rule `ctx.selection`."""
    outcome = select(ctx, *method.candidates(ctx, state))
    outcome.details = method.details(state, outcome.member)
    return outcome


def _restored(method: Method, ctx: RunContext, resumed: dict):
    checkpoint = ctx.run_dir / checkpoints.CHECKPOINT_DIR / CHECKPOINT_FILE
    try:
        state = method.state_type.from_json(resumed["state"])
    except (KeyError, TypeError, ValueError) as error:
        raise checkpoints.CheckpointError(
            f"{checkpoint}: its state is not one {method.name} can resume ({error!r} missing or wrong); "
            "choose a new folder"
        ) from None
    ctx.fitness.restore(resumed["fitness"])
    ctx.store.digests.update(resumed.get("files", {}))
    return state


def run_generation(method: Method, ctx: RunContext, state, generation: int, pricing: Budget | None = None):
    """Ask and tell rounds until the method finishes `generation` (`pricing`: the budget, none
    by default); (state, True) when the budget stopped it."""
    pricing = pricing or Budget(ctx, method, None)
    while state.generation < generation:
        ask = method.ask(ctx, state, generation)
        told, complete = _answer(ctx, ask, pricing, state, whole=generation == 0)
        if not complete and not told.made:  # nothing new to tell (generation 0 fits whole or raises)
            return state, True
        state = method.tell(ctx, state, ask, told)
        if not complete:
            return state, True
    return state, False


def _answer(ctx: RunContext, ask: Ask, pricing: Budget, state, whole: bool = False) -> tuple[Told, bool]:
    """Score `ask.again`, then make, store and score `ask.new` in order while the budget
    allows: (what to tell, whether everything asked for was done); nothing is scored when even
    the re-scoring does not fit. `whole` (generation 0: a search needs all of it): a round that
    does not fit whole is refused before anything is scored, naming the budget it needs."""
    room = pricing.room(state)
    prices = _prices(ask, pricing, state)
    if whole and sum(prices) > room:
        needed = pricing.examples - room + sum(prices)  # (what is scored + the choice's reserve + the round)
        raise ConfigError(
            [
                f"budget.examples={pricing.examples}: is below what generation 0 and the final choice "
                f"alone score (at least {needed}); raise it"
            ]
        )
    if prices[0] > room:
        return Told({}, []), False
    scores = {m.ident: ctx.score(m, ask.sample) for m in ask.again}
    room -= prices[0]
    made = []
    for candidate, price in zip(ask.new, prices[1:], strict=True):
        if price > room:
            return Told(scores, made), False
        room -= price
        tensors = candidate.make()
        ctx.store.save(candidate.member.ident, tensors)
        del tensors  # stored: the candidate's tensors go before it is scored and the next is made
        if candidate.scored:
            scores[candidate.member.ident] = ctx.score(candidate.member, ask.sample)
        made.append(candidate.member)
    return Told(scores, made), True


def _prices(ask: Ask, pricing: Budget, state) -> list[int]:
    """What each step of answering `ask` scores, the re-scoring first, then each new candidate:
    its sample's uncached examples plus what it adds to the final choice (all 0 without a
    budget). A price depends on the round alone, not on what was made before it."""
    prices = [sum(pricing.uncached(ident, ask.sample) for ident in {m.ident for m in ask.again})]
    joining = pricing.joining(state, ask.sample)
    open_seats, cheapest = pricing.seats(state)
    for candidate in ask.new:
        price = 0
        if candidate.scored:
            if open_seats is None or open_seats > 0:
                reserve = joining
                if open_seats is not None:
                    open_seats -= 1
                    cheapest = joining if cheapest is None else min(cheapest, joining)
            else:  # the set is full: the newcomer replaces a member (one at least this cheap) or leaves
                reserve = max(0, joining - cheapest)
            price = pricing.uncached(candidate.member.ident, ask.sample) + reserve
        prices.append(price)
    return prices


def _finish_generation(
    ctx, state, writer: Checkpointer, metrics: MetricsFile, log, generation: int, spent: bool = False
) -> dict:
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
    _forget_others(ctx, state)
    writer.save(state, spent=spent)
    _drop_orphans(ctx, state, _previous_members(ctx))
    metrics.append(record)
    log(record)
    return record


def _forget_others(ctx: RunContext, state) -> None:
    """Drop the cached scores of individuals that left the state (they are never scored again)."""
    keep = {m.ident for m in state.members}
    for ident in [i for i in ctx.fitness.cache if i not in keep]:
        ctx.fitness.forget(ident)


def _previous_members(ctx: RunContext) -> set[str]:
    """The individuals the previous generation's checkpoint refers to (kept one generation
    longer, so that it can be resumed from)."""
    path = ctx.run_dir / checkpoints.CHECKPOINT_DIR / checkpoints.PREVIOUS_FILE
    try:
        return set(json.loads(path.read_text()).get("files", {})) if path.is_file() else set()
    except (OSError, ValueError):
        return set()


def _drop_orphans(ctx: RunContext, state, also_keep: set[str] = frozenset()) -> None:
    """Remove the stored individuals that neither the state nor `also_keep` refers to: those an
    interrupted generation wrote, and those no checkpoint needs any more."""
    keep = {m.ident for m in state.members} | set(also_keep)
    for ident in ctx.store.idents():
        if ident not in keep:
            ctx.store.delete(ident)
