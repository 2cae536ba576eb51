"""An expert left unmerged: the reference rows of a table, scored like any method's result."""

from __future__ import annotations

from sae_merging.runtime.context import Member, Outcome, RunContext


class Expert:
    name = "expert"

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def run(self, ctx: RunContext) -> Outcome:
        names = ctx.models.expert_names
        if not 0 <= self.index < len(names):
            raise ValueError(f"method.index={self.index}: the pool has experts 0..{len(names) - 1} ({names})")
        member = Member(ident=f"expert-{self.index}", origin=f"expert:{names[self.index]}")
        ctx.store.save(member.ident, ctx.load_expert(self.index))
        return Outcome(member, ctx.score(member, ctx.sample(0)), details={"expert": names[self.index]})
