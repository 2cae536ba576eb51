"""Experts left unmerged: the reference rows of a table (`expert`, by index) and the "search
helps" control (`best_expert`: the expert with the best selection score), scored like any
method's result."""

from __future__ import annotations

from sae_merging.methods.settings import BestExpertSettings, ExpertSettings
from sae_merging.runtime.context import Member, Outcome, RunContext
from sae_merging.runtime.selection import choice_sample, select


def _stored_expert(ctx: RunContext, index: int) -> Member:
    names = ctx.models.expert_names
    member = Member(ident=f"expert-{index}", origin=f"expert:{names[index]}")
    ctx.store.save(member.ident, ctx.expert_tensors(index))  # streamed: never held whole
    return member


class Expert(ExpertSettings):
    """`index` is checked against the pool before anything is loaded (`ExpertSettings`)."""

    def run(self, ctx: RunContext) -> Outcome:
        names = ctx.models.expert_names
        member = _stored_expert(ctx, self.index)
        scores = ctx.score(member, choice_sample(ctx, ctx.sample(0)))
        return Outcome(member, scores, details={"expert": names[self.index]})


class BestExpert(BestExpertSettings):
    """The expert a user would pick without merging: the best by the selection rule on
    optimization data (draw 0, or the validation set). A merge that does not beat it has not
    shown that search or merging helps."""

    def run(self, ctx: RunContext) -> Outcome:
        members = [_stored_expert(ctx, i) for i in range(len(ctx.models.expert_names))]
        outcome = select(ctx, members, ctx.sample(0))
        outcome.details["chosen_expert"] = outcome.member.origin.removeprefix("expert:")
        for member in members:
            if member.ident != outcome.member.ident:
                ctx.store.delete(member.ident)
        return outcome
