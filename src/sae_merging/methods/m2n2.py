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
4. Crossover: a split point s and a mixing ratio r ~ U(0, 1); the child is interp(A, B, t)
   with t = r before the split and 1 - r after it (t is the second parent's share). `split_at`:
   `tensor` draws s over the ordered tensor list (whole tensors on either side), `entry` over
   the entries of the flattened parameter vector, as the reference's `crossover` does.
   `interpolation`: `lerp` (default), `slerp` with each tensor's own angle, or `slerp_flat`
   with the angle between the two whole flattened parameter vectors, the reference's
   `slerp_w_splitpoint` (its lerp fallback when sin(angle) <= 1e-6 too).
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

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.merging.child import ChildRecipe, Pruned
from sae_merging.methods.archive import RESCORED, Archive
from sae_merging.methods.settings import M2N2Settings
from sae_merging.methods.sharing import attraction, shared_matrix, weighted_index
from sae_merging.runtime.context import Ask, Candidate, Member, PopulationState, RunContext, Told
from sae_merging.runtime.fitness import Scores

FLAT_MIN_SIN = 1e-6  # natural_niches' slerp: lerp where sin(angle) <= this


def interpolate(
    a: torch.Tensor, b: torch.Tensor, t: float, kind: str = "lerp", cos: float | None = None
) -> torch.Tensor:
    """From `a` (t = 0) to `b` (t = 1): (1 - t) a + t b, or along the sphere (`slerp`: the
    tensor's own angle; `slerp_flat`: the angle `cos` of the whole flattened models)."""
    if kind == "slerp":
        return merge_fns.slerp(a, b, t, cos=cos)
    if kind == "slerp_flat":
        return merge_fns.slerp(a, b, t, cos=cos, min_sin=FLAT_MIN_SIN)
    return merge_fns.linear(a, b, 1.0 - t)


@dataclass(frozen=True)
class Share:
    """The crossover's argument for one tensor: its first `before` flat entries lie before the
    split point (parent B's share r), the rest after it (share 1 - r); `cos`: the angle of the
    whole flattened models (slerp_flat)."""

    before: int
    ratio: float
    cos: float | None = None


def crossover_tensor(a: torch.Tensor, b: torch.Tensor, share: Share, kind: str = "lerp") -> torch.Tensor:
    """One tensor of the child (the merger of the child path); a whole tensor on one side of
    the split is one interpolation."""
    n, before, ratio, cos = a.numel(), share.before, share.ratio, share.cos
    if before <= 0 or before >= n:
        return interpolate(a, b, ratio if before >= n else 1.0 - ratio, kind, cos)
    if kind == "slerp" and cos is None:
        cos = merge_fns.cosine([(a, b)])  # the tensor's own angle, not each part's
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    parts = [
        interpolate(flat_a[:before], flat_b[:before], ratio, kind, cos),
        interpolate(flat_a[before:], flat_b[before:], 1.0 - ratio, kind, cos),
    ]
    return torch.cat(parts).view(a.shape)


def crossover_shares(split: int, ratio: float, kind: str, split_at: str):
    """The crossover as a weight rule of the child path: each tensor's `Share` (split point
    `split` over the tensor list or over the flat entries), with the whole models' angle when
    `kind` is slerp_flat (one more pass over both parents)."""

    def shares(pruned_a: Pruned, pruned_b: Pruned) -> dict[str, Share]:
        parent_a, parent_b = pruned_a.tensors, pruned_b.tensors
        names = list(parent_a)
        cos = merge_fns.cosine((parent_a[n], parent_b[n]) for n in names) if kind == "slerp_flat" else None
        out, offset = {}, 0
        for index, name in enumerate(names):
            n = parent_a[name].numel()
            before = (n if index < split else 0) if split_at == "tensor" else split - offset
            out[name] = Share(before, ratio, cos)
            offset += n
        return out

    return shares


def crossover(
    parent_a, parent_b, split: int, ratio: float, kind: str, split_at: str
) -> dict[str, torch.Tensor]:
    """The child of two parents (name -> tensor mappings), through the child path."""
    recipe = ChildRecipe(merger=partial(crossover_tensor, kind=kind))
    return recipe.make(parent_a, parent_b, crossover_shares(split, ratio, kind, split_at)).tensors


M2N2State = PopulationState


class M2N2(M2N2Settings, Archive):
    """See the module docstring. Parameters mirror `conf/method/m2n2.yaml` (checked by
    `M2N2Settings`); the archive and its competition: `methods.archive`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recipe = ChildRecipe(
            merger=partial(crossover_tensor, kind=self.interpolation),
            stream_above_gb=self.stream_parents_above_gb,
        )

    # --- ask / tell (`methods.base`) -------------------------------------------------------

    def ask(self, ctx: RunContext, state: M2N2State, generation: int) -> Ask:
        """Generation 0: the experts, scored on draw 0. Then per generation: the archive
        re-scored on its sample, then `children_per_step` rounds of one child each (a child's
        parents are drawn from the archive the one before it left)."""
        if generation == 0:
            founders = [
                Candidate(
                    state.new_member(f"expert:{name}", 0), lambda index=index: ctx.expert_tensors(index)
                )
                for index, name in enumerate(ctx.models.expert_names)
            ]
            return Ask(ctx.sample(0), new=founders)
        if "scores" not in state.pending:
            return self.rescore(ctx, state, generation)
        scores, ratios = state.pending["scores"], state.pending["ratios"]
        rng = ctx.rng("m2n2", generation, len(ratios))
        shares = shared_matrix([scores[m.ident].flat() for m in state.members], self.alpha)
        first = weighted_index(rng, [sum(row) for row in shares])
        second = weighted_index(rng, attraction(shares, first), exclude=first)
        a, b = state.members[first], state.members[second]
        split, ratio = rng.randrange(self._split_points(ctx)), rng.random()
        child = state.new_member("child", generation, parents=[a.ident, b.ident])
        child.extra = {"split": split, "ratio": ratio}
        make = partial(self._crossover, ctx, a, b, split, ratio)
        return Ask(self.sample_of(ctx, generation), new=[Candidate(child, make)], note=generation)

    def tell(self, ctx: RunContext, state: M2N2State, ask: Ask, told: Told) -> M2N2State:
        if ask.note is None:  # generation 0
            state.members = list(told.made)
            state.metrics = self._summary(state, told.scores, accepted=0, ratios=[])
            state.generation = 0
        elif ask.note == RESCORED:
            state.pending = {"scores": dict(told.scores), "ratios": [], "accepted": 0}
        else:
            scores, pending = state.pending["scores"], state.pending
            for child in told.made:
                pending["ratios"].append(child.extra["ratio"])
                scores[child.ident] = told[child]
                pending["accepted"] += self.admit(state, child, scores) is not child
            if len(pending["ratios"]) == self.children_per_step:
                state.generation = ask.note
                state.metrics = self._summary(state, scores, pending["accepted"], pending["ratios"])
                state.pending = {}
        return state

    # --- pieces ----------------------------------------------------------------------------

    def competition_values(self, candidates: list[Member], scores: Mapping[str, Scores]) -> list[float]:
        """The shared fitness of each candidate (computed with the newcomer among them)."""
        shares = shared_matrix([scores[m.ident].flat() for m in candidates], self.alpha)
        return [sum(row) for row in shares]

    def _split_points(self, ctx: RunContext) -> int:
        """How many places the split point can take: tensors, or entries of the flat vector."""
        if self.split_at == "tensor":
            return len(ctx.merge_names())
        rows = ctx.models.compatibility.common_rows
        shapes = ctx.models.compatibility.shapes
        return sum(
            math.prod((rows[n], *shapes[n][1:]) if n in rows else shapes[n]) for n in ctx.merge_names()
        )

    def _crossover(
        self, ctx: RunContext, a: Member, b: Member, split: int, ratio: float
    ) -> dict[str, torch.Tensor]:
        """The child through the one child path (`merging.child`), unpruned: each tensor is
        interpolated with its `Share` of the crossover."""
        parents = self.recipe.parents(
            ctx.store.open(a.ident), ctx.store.nbytes(a.ident), ctx.store.open(b.ident)
        )
        rule = crossover_shares(split, ratio, self.interpolation, self.split_at)
        with ctx.timer.section("merge"):  # on the run's device
            return self.recipe.on(ctx.device).make(*parents, rule).tensors

    def _summary(
        self, state: M2N2State, scores: dict[str, Scores], accepted: int, ratios: list[float]
    ) -> dict:
        fitness = self.competition_values(state.members, scores)
        best = self.best(state, scores)
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
