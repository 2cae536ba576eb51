"""Random search over merge weights: the example of docs/adding-a-method.md.

Each generation asks for `per_generation` weighted averages of the experts (weights drawn
uniformly from [0, 1], seeded by the run's seed and the generation) and keeps the `keep` best
on optimization draw 0. The loop does the rest: budget, scoring, storage, checkpoints and
resume, metrics and W&B, and the final choice among the kept ones (`selection=`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_merging.merging.functions import weighted_average
from sae_merging.methods.base import Strategy
from sae_merging.runtime.context import Ask, Candidate, Member, PopulationState, RunContext, Sample, Told


@dataclass
class RandomSearch(Strategy):
    steps: int = 5  # generations after generation 0 (without a budget)
    per_generation: int = 2
    keep: int = 2
    name: str = "random_search"

    def ask(self, ctx: RunContext, state: PopulationState, generation: int) -> Ask:
        rng = ctx.rng("random_search", generation)
        new = []
        for _ in range(self.per_generation):
            weights = [rng.random() for _ in ctx.models.experts]
            member = state.new_member("random", generation, extra={"weights": weights})
            new.append(Candidate(member, lambda weights=weights: self.merge(ctx, weights)))
        return Ask(ctx.sample(0), new=new, note=generation)

    def merge(self, ctx: RunContext, weights: list[float]) -> dict:
        experts = [ctx.expert_tensors(i) for i in range(len(weights))]
        return {name: weighted_average([e[name] for e in experts], weights) for name in ctx.merge_names()}

    def tell(self, ctx: RunContext, state: PopulationState, ask: Ask, told: Told) -> PopulationState:
        for member in told.made:
            member.extra["score"] = told[member].mean
        ranked = sorted(state.members + told.made, key=lambda m: -m.extra["score"])
        state.members = ranked[: self.keep]
        state.generation = ask.note
        state.metrics = {"best/score": ranked[0].extra["score"], "best/ident": ranked[0].ident}
        return state

    def candidates(self, ctx: RunContext, state: PopulationState) -> tuple[list[Member], Sample]:
        return state.members, ctx.sample(0)
