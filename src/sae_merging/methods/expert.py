"""Experts left unmerged: the reference rows of a table (`expert`, by index) and the "search
helps" control (`best_expert`: the expert with the best selection score), scored like any
method's result. Each asks once, for stored copies of the experts; the loop's final choice
(`selection=`, on draw 0 or the validation set) does the rest."""

from __future__ import annotations

from typing import Any

from sae_merging.methods.base import Strategy
from sae_merging.methods.settings import BestExpertSettings, ExpertSettings
from sae_merging.runtime.context import Ask, Candidate, Member, PopulationState, RunContext, Sample, Told


class Experts(Strategy):
    """Generation 0 only: copies of the experts `indices(ctx)` (streamed, never held whole),
    stored unscored; the choice scores them."""

    steps = 0
    fixed_steps = True

    def indices(self, ctx: RunContext) -> list[int]:
        raise NotImplementedError

    def ask(self, ctx: RunContext, state: PopulationState, generation: int) -> Ask:
        names = ctx.models.expert_names
        new = [
            Candidate(
                Member(f"expert-{i}", f"expert:{names[i]}"), lambda i=i: ctx.expert_tensors(i), scored=False
            )
            for i in self.indices(ctx)
        ]
        return Ask(ctx.sample(0), new=new)

    def tell(self, ctx: RunContext, state: PopulationState, ask: Ask, told: Told) -> PopulationState:
        state.members, state.generation = list(told.made), 0
        return state

    def candidates(self, ctx: RunContext, state: PopulationState) -> tuple[list[Member], Sample]:
        return state.members, ctx.sample(0)


class Expert(ExpertSettings, Experts):
    """`index` is checked against the pool before anything is loaded (`ExpertSettings`)."""

    def indices(self, ctx: RunContext) -> list[int]:
        return [self.index]

    def details(self, state: PopulationState, chosen: Member) -> dict[str, Any]:
        return {"expert": chosen.origin.removeprefix("expert:")}


class BestExpert(BestExpertSettings, Experts):
    """The expert a user would pick without merging: the best by the selection rule on
    optimization data (draw 0, or the validation set). A merge that does not beat it has not
    shown that search or merging helps."""

    def indices(self, ctx: RunContext) -> list[int]:
        return list(range(len(ctx.models.expert_names)))

    def details(self, state: PopulationState, chosen: Member) -> dict[str, Any]:
        return {"chosen_expert": chosen.origin.removeprefix("expert:")}
