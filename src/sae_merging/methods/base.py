"""The one interface of a merging method: ask for candidates, be told their scores.

A method is an ask/tell strategy over an explicit state. Each generation is one or
more rounds: `ask(ctx, state, generation)` returns an `Ask` (individuals to score again, and
new candidates as recipes: parents, weights, prune rates, whatever builds them), the loop
makes, stores and scores them, and `tell(ctx, state, ask, told)` updates the state; the method
marks a generation finished by setting `state.generation = generation`. Everything else is the
loop's (`sae_merging.runtime.loop`): scoring and its cache, the example budget (it prices each
candidate before making it and stops asking once the budget is spent), storing and deleting
individuals, checkpoints and resume, metrics.jsonl, W&B, the progress bar and the final choice
among `candidates(ctx, state)` by the selection rule (`runtime.selection`). One-shot merges ask
once per point of their grid; the expert controls ask once. `docs/adding-a-method.md` walks
through a new method. The types exchanged are in `sae_merging.runtime.context`.
"""

from __future__ import annotations

from typing import Any, Protocol

from sae_merging.runtime.context import Ask, Member, PopulationState, RunContext, Sample, Told


class Method(Protocol):
    name: str
    steps: int  # the last generation (0: generation 0 only) when no budget runs the search
    fixed_steps: bool  # True: `steps` holds under a budget too (a grid has as many points as it has)
    state_type: type  # to_json() / from_json(data); fields generation, members, metrics

    def init(self, ctx: RunContext) -> Any:
        """The state before generation 0 (generation -1); no model work."""

    def ask(self, ctx: RunContext, state: Any, generation: int) -> Ask:
        """The next round of `generation`."""

    def tell(self, ctx: RunContext, state: Any, ask: Ask, told: Told) -> Any:
        """The state after the round; `told.made` may be a prefix of `ask.new` (budget spent)."""

    def candidates(self, ctx: RunContext, state: Any) -> tuple[list[Member], Sample]:
        """What the final choice compares, and the method's last optimization draw."""

    def details(self, state: Any, chosen: Member) -> dict[str, Any]:
        """What results.json's `details` records of the choice."""

    def capacity(self, state: Any) -> int | None:
        """The most candidates the final choice can ever compare (an archive's places), None for
        no limit: the budget stops reserving for newcomers once the set is full."""


class Strategy:
    """The defaults of `Method` a method may inherit: a `PopulationState`, the budget decides
    the number of generations, no details."""

    fixed_steps = False
    state_type = PopulationState

    def init(self, ctx: RunContext) -> Any:
        return self.state_type()

    def details(self, state: Any, chosen: Member) -> dict[str, Any]:
        return {}

    def capacity(self, state: Any) -> int | None:
        return None
