"""M2N2 (Abrantes, Lange & Tang 2025, "Competition and Attraction Improve Model Fusion").

The archive starts with the experts and grows with children up to `archive_size`. Each
generation makes `children_per_step` children, one after another (the archive changes between
them, as in the reference loop, which makes one child per iteration):

1. Score the archive on the optimization sample (per-example correctness; a fixed draw by
   default, as the reference scores everyone on one fixed training set; `redraw_opt` re-draws
   every generation) and compute fitness sharing with exponent `alpha`:
   F_kj = s_kj / (sum_k' s_k'j)^alpha, f_k = sum_j F_kj.
2. First parent: drawn with probability f_k / sum f (as the reference `sample_parents`).
3. Second parent: drawn with probability proportional to the attraction
   sum_j max(0, F_ij - F_p1,j), what member i solves that the first parent does not.
4. Crossover: a split point s over the ordered parameter list and a mixing ratio r ~ U(0, 1);
   the child's tensor l is interp(A_l, B_l, t_l) with t_l = r before the split and 1 - r after
   it (t is the second parent's share); `interpolation`: lerp (default) or slerp (per tensor).
   No mutation (the paper mutates only models trained from scratch).
5. The child joins while the archive has room; then it replaces the member with the lowest
   shared fitness (computed with the child included) if its own is strictly higher.

Zero divisions the reference leaves open are guarded: an example nobody solves gives no credit
(as there), and when every shared fitness or every attraction is 0 (nobody solves anything, or
no member adds anything to the first parent) the parent is drawn uniformly instead of from
0/0 probabilities (the second parent then among the members other than the first).
All draws come from `ctx.rng(seed, generation, child)`, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.merging.child import ChildRecipe
from sae_merging.methods.settings import M2N2Settings
from sae_merging.methods.sharing import attraction, shared_matrix, weakest, weighted_index
from sae_merging.runtime.context import Member, Outcome, PopulationState, RunContext, Sample
from sae_merging.runtime.fitness import Scores
from sae_merging.runtime.selection import select


def interpolate(a: torch.Tensor, b: torch.Tensor, t: float, kind: str = "lerp") -> torch.Tensor:
    """From `a` (t = 0) to `b` (t = 1): (1 - t) a + t b, or along the sphere (`slerp`)."""
    return merge_fns.slerp(a, b, t) if kind == "slerp" else merge_fns.linear(a, b, 1.0 - t)


def crossover_shares(count: int, split: int, ratio: float) -> list[float]:
    """The second parent's share t_l of each of `count` ordered tensors: r before the split
    point, 1 - r from it on."""
    return [ratio if index < split else 1.0 - ratio for index in range(count)]


M2N2State = PopulationState


class M2N2(M2N2Settings):
    """See the module docstring. Parameters mirror `conf/method/m2n2.yaml` (checked by
    `M2N2Settings`)."""

    state_type = M2N2State

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recipe = ChildRecipe(
            merger=partial(interpolate, kind=self.interpolation), stream_above_gb=self.stream_parents_above_gb
        )

    # --- the generation loop's interface ---------------------------------------------------

    def initialize(self, ctx: RunContext) -> M2N2State:
        """Generation 0: the experts."""
        names = ctx.models.expert_names
        state = M2N2State(generation=0)
        for index, name in enumerate(names):
            state.members.append(self._store(ctx, state, ctx.load_expert(index), f"expert:{name}", 0))
        sample = ctx.sample(0)
        state.metrics = self._summary(state, self._scores(ctx, state, sample), accepted=0, ratios=[])
        return state

    def step(self, ctx: RunContext, state: M2N2State, generation: int) -> M2N2State:
        sample = ctx.generation_sample(generation, self.redraw_opt)
        scores = self._scores(ctx, state, sample)
        accepted, ratios = 0, []
        for child_index in range(self.children_per_step):
            rng = ctx.rng("m2n2", generation, child_index)
            shares = shared_matrix([scores[m.ident].flat() for m in state.members], self.alpha)
            first = weighted_index(rng, [sum(row) for row in shares])
            second = weighted_index(rng, attraction(shares, first), exclude=first)
            a, b = state.members[first], state.members[second]
            split, ratio = rng.randrange(len(ctx.merge_names())), rng.random()
            ratios.append(ratio)
            tensors = self._crossover(ctx, a, b, split, ratio)
            child = self._store(ctx, state, tensors, "child", generation, [a.ident, b.ident])
            child.extra = {"split": split, "ratio": ratio}
            scores[child.ident] = ctx.score(child, sample)
            accepted += self._compete(ctx, state, child, scores)
        state.generation = generation
        state.metrics = self._summary(state, scores, accepted, ratios)
        return state

    def best(self, ctx: RunContext, state: M2N2State) -> Outcome:
        """The archive member chosen by the selection rule (`selection=`)."""
        return select(ctx, state.members, ctx.generation_sample(state.generation, self.redraw_opt))

    # --- pieces ----------------------------------------------------------------------------

    def _scores(self, ctx: RunContext, state: M2N2State, sample: Sample) -> dict[str, Scores]:
        return {m.ident: ctx.score(m, sample) for m in state.members}

    def _store(
        self, ctx: RunContext, state: M2N2State, tensors, origin: str, generation: int, parents=None
    ) -> Member:
        member = Member(
            f"g{generation:03d}-{state.next_id:04d}", origin, generation, parents=list(parents or [])
        )
        state.next_id += 1
        ctx.store.save(member.ident, tensors)
        return member

    def _crossover(
        self, ctx: RunContext, a: Member, b: Member, split: int, ratio: float
    ) -> dict[str, torch.Tensor]:
        """The child through the one child path (`merging.child`), unpruned: tensor l is
        interpolate(A_l, B_l, t_l) with the crossover's shares t_l."""
        parents = [self.recipe.parent(ctx.store.open(m.ident), ctx.store.nbytes(m.ident)) for m in (a, b)]

        def shares(parent_a, parent_b) -> dict[str, float]:
            return dict(zip(parent_a, crossover_shares(len(parent_a), split, ratio), strict=True))

        with ctx.timer.section("merge"):
            return self.recipe.make(*parents, shares).tensors

    def _compete(self, ctx: RunContext, state: M2N2State, child: Member, scores: dict[str, Scores]) -> int:
        """1 if the child entered the archive, 0 if it left."""
        if len(state.members) < self.archive_size:
            state.members.append(child)
            return 1
        candidates = state.members + [child]
        shares = shared_matrix([scores[m.ident].flat() for m in candidates], self.alpha)
        loser = weakest([sum(row) for row in shares])
        if loser == len(state.members):
            ctx.retire(child.ident)
            scores.pop(child.ident)
            return 0
        ctx.retire(state.members[loser].ident)
        scores.pop(state.members[loser].ident)
        state.members[loser] = child
        return 1

    def _summary(
        self, state: M2N2State, scores: dict[str, Scores], accepted: int, ratios: list[float]
    ) -> dict:
        shares = shared_matrix([scores[m.ident].flat() for m in state.members], self.alpha)
        fitness = [sum(row) for row in shares]
        best = max(state.members, key=lambda m: scores[m.ident].mean)
        summary = {
            "fitness/best": max(fitness),
            "fitness/mean": statistics.fmean(fitness),
            "fitness/worst": min(fitness),
            "best/score": scores[best.ident].mean,
            **{f"best/{task}": acc for task, acc in scores[best.ident].task_accuracy().items()},
            "best/ident": best.ident,
            "archive/size": len(state.members),
            "children/accepted": accepted,
        }
        if ratios:
            summary["ratio/mean"] = statistics.fmean(ratios)
        return summary
