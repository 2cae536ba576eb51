"""The loop's budget on a toy method (no model): every candidate is priced before it is made,
an unaffordable one is never made, the method is told the prefix that fit, the choice's cost is
kept in reserve, and nothing is rolled back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sae_merging.methods.base import Strategy
from sae_merging.runtime.context import Ask, Candidate, PopulationState
from sae_merging.runtime.fitness import FitnessCounters, FitnessEvaluator, Scores
from sae_merging.runtime.loop import Budget, run_generation
from sae_merging.utils.settings import ConfigError

SAMPLE = {"t": (None, [SimpleNamespace(uid=f"t/{i}") for i in range(10)])}  # 10 examples a candidate


class Fitness:
    def __init__(self) -> None:
        self.cache, self.counters = {}, FitnessCounters()

    uncached = FitnessEvaluator.uncached  # the real cache accounting (it reads only `cache`)

    def score(self, ident, sample) -> Scores:
        self.counters.examples_scored += self.uncached(ident, sample)
        self.cache.setdefault(ident, {}).update({e.uid: True for _, ex in sample.values() for e in ex})
        return Scores({"t": [True] * 10})


class ThreePerGeneration(Strategy):
    """Asks for three candidates per generation; notes which ones the loop made."""

    steps, name = 5, "toy"

    def __init__(self) -> None:
        self.made: list[str] = []

    def ask(self, ctx, state, generation):
        def make(member):
            return lambda: self.made.append(member.ident) or {}

        members = [state.new_member("toy", generation) for _ in range(3)]
        return Ask(SAMPLE, new=[Candidate(m, make(m)) for m in members], note=generation)

    def tell(self, ctx, state, ask, told):
        state.members += told.made
        state.generation = ask.note
        return state

    def candidates(self, ctx, state):
        return state.members[-1:], SAMPLE  # the newest is the choice's one candidate


def _ctx():
    fitness = Fitness()
    return SimpleNamespace(
        fitness=fitness,
        selection="last_draw",
        store=SimpleNamespace(save=lambda ident, tensors: None),
        score=lambda member, sample: fitness.score(member.ident, sample),
    )


def test_candidates_are_made_only_while_their_price_fits():
    method, ctx = ThreePerGeneration(), _ctx()
    state, spent = run_generation(method, ctx, PopulationState(), 0, Budget(ctx, method, 55))
    assert not spent and method.made == ["g000-0000", "g000-0001", "g000-0002"]
    state, spent = run_generation(method, ctx, state, 1, Budget(ctx, method, 55))
    # 30 scored, 25 left: two more candidates (20) fit, the third (10) would pass 55
    assert spent and len(method.made) == 5 and ctx.fitness.counters.examples_scored == 50
    assert [m.ident for m in state.members] == method.made and state.generation == 1  # told the prefix


def test_nothing_is_made_when_the_first_candidate_does_not_fit():
    method, ctx = ThreePerGeneration(), _ctx()
    state, _ = run_generation(method, ctx, PopulationState(), 0, Budget(ctx, method, 30))
    state, spent = run_generation(method, ctx, state, 1, Budget(ctx, method, 39))
    assert spent and len(method.made) == 3 and state.generation == 0  # generation 1 never told


def test_a_generation_0_that_does_not_fit_whole_is_refused_before_anything_is_made():
    """A search needs all of generation 0: 30 examples (3 x 10) plus the choice's 5 on the
    validation set, refused at 34 naming 35, before a candidate is made; 35 runs it whole."""
    method, ctx = KeepsTheBest(1), _validation_ctx()
    with pytest.raises(ConfigError, match=r"budget.examples=34: .* \(at least 35\); raise it"):
        run_generation(method, ctx, PopulationState(), 0, Budget(ctx, method, 34))
    assert method.made == [] and ctx.fitness.counters.examples_scored == 0
    state, spent = run_generation(method, ctx, PopulationState(), 0, Budget(ctx, method, 35))
    assert not spent and len(method.made) == 3 and state.generation == 0


def test_without_a_budget_every_candidate_is_made():
    method, ctx = ThreePerGeneration(), _ctx()
    state, spent = run_generation(method, ctx, PopulationState(), 0)
    assert not spent and len(method.made) == 3 and ctx.fitness.counters.examples_scored == 30
    assert [m.ident for m in state.members] == method.made


class KeepsTheBest(ThreePerGeneration):
    """The same asks; the choice compares one candidate (an archive of one place)."""

    def __init__(self, capacity) -> None:
        super().__init__()
        self.places = capacity

    def capacity(self, state):
        return self.places


VALIDATION = [SimpleNamespace(uid=f"v/{i}") for i in range(5)]  # the choice scores 5 examples


def _validation_ctx():
    ctx = _ctx()
    ctx.selection, ctx.seed = "validation", 0
    ctx.tasks = SimpleNamespace(
        tasks=[SimpleNamespace(name="t")], validation_set=lambda task, seed: VALIDATION
    )
    return ctx


def test_a_full_candidate_set_reserves_only_what_a_newcomer_adds():
    """Each candidate costs 10; the choice 5 per candidate. Without a capacity every newcomer
    reserves 5 (15 each: two fit in 35); with one place, the first reserves 5 and the others,
    which can only take its place, nothing more (15 + 10 + 10 = 35: all three fit)."""
    unbounded, ctx = KeepsTheBest(None), _validation_ctx()
    run_generation(unbounded, ctx, PopulationState(generation=0), 1, Budget(ctx, unbounded, 35))
    assert len(unbounded.made) == 2
    one_place, ctx = KeepsTheBest(1), _validation_ctx()
    run_generation(one_place, ctx, PopulationState(generation=0), 1, Budget(ctx, one_place, 35))
    assert len(one_place.made) == 3 and ctx.fitness.counters.examples_scored == 30  # + 5 for the choice
