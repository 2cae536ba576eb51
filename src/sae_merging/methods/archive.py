"""The archive SAE and M2N2 share: members competing for `archive_size` places.

A method supplies the competition hooks: `competition_values` (what a place is won by: SAE's
p + alpha * S or shared fitness, M2N2's shared fitness) and `protected` (places no newcomer
may take: SAE's elites and kept experts). The archive gives the rest: admitting a newcomer
(joins while there is room, then replaces the weakest unprotected member if strictly fitter),
the rescoring round of a generation, the best member, and the final choice's candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sae_merging.methods.base import Strategy
from sae_merging.methods.sharing import weakest
from sae_merging.runtime.context import Ask, Member, PopulationState, RunContext, Sample
from sae_merging.runtime.fitness import Scores

RESCORED = "rescored"  # the note of a generation's first round (`Archive.rescore`)


class Archive(Strategy):
    """Mixed into a method whose settings have `archive_size` and `redraw_opt`."""

    archive_size: int
    redraw_opt: bool

    def competition_values(self, candidates: list[Member], scores: Mapping[str, Scores]) -> list[float]:
        raise NotImplementedError

    def protected(self, members: Sequence[Member], scores: Mapping[str, Scores]) -> set[int]:
        return set()

    def admit(self, state: PopulationState, child: Member, scores: Mapping[str, Scores]) -> Member | None:
        """Let `child` compete: it joins while the archive has room (None returned); then the
        lowest competition value among the unprotected places and the child leaves (returned:
        the child itself when it lost). Ties keep the incumbent: a member is only replaced by
        a strictly fitter child."""
        if len(state.members) < self.archive_size:
            state.members.append(child)
            return None
        candidates = state.members + [child]
        values = self.competition_values(candidates, scores)
        protected = self.protected(state.members, scores)
        eligible = [i for i in range(len(candidates)) if i not in protected]  # the child is last
        loser = eligible[weakest([values[i] for i in eligible])]
        if loser == len(state.members):
            return child
        leaver, state.members[loser] = state.members[loser], child
        return leaver

    def capacity(self, state: PopulationState) -> int:
        return self.archive_size

    def sample_of(self, ctx: RunContext, generation: int) -> Sample:
        """The optimization sample of a generation (generation 0 always scores on draw 0)."""
        return ctx.generation_sample(generation, self.redraw_opt)

    def rescore(self, ctx: RunContext, state: PopulationState, generation: int) -> Ask:
        """A generation's first round: the archive scored on its sample (cached per example)."""
        return Ask(self.sample_of(ctx, generation), again=list(state.members), note=RESCORED)

    @staticmethod
    def best(state: PopulationState, scores: Mapping[str, Scores]) -> Member:
        """The member of best task score (the first of equals)."""
        return max(state.members, key=lambda m: scores[m.ident].mean)

    def candidates(self, ctx: RunContext, state: PopulationState) -> tuple[list[Member], Sample]:
        """What the final choice compares: the archive, and the last optimization draw."""
        return state.members, self.sample_of(ctx, max(state.generation, 0))
