"""Sparsity-Aware Evolution (paper section 2; every choice the paper leaves open is an option).

Generation 0 fills the archive with the dense experts and `n_sparse_variants` magnitude-pruned
copies of each (rates evenly spaced over the schedule's range). Each generation t then:
draws the optimization sample (re-drawn every generation by default) and re-scores the
archive on it (cached per example); pairs the archive at random; for each pair prunes
temporary copies of both parents to s_t, mixes them tensor by tensor with the sparsity-aware
ratio of eq. 5 (`scoring`: one sparsity per model or per tensor), merges them (`merger`: eq. 4
or attraction), optionally re-denses positions zero in both parents from the original experts,
prunes the child to s_t, scores it with fitness p + alpha * S, and lets it compete for a place
(`competition`: replace the worst, or M2N2-style fitness sharing).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.merging.child import Child, ChildRecipe
from sae_merging.methods.settings import SAESettings
from sae_merging.methods.sharing import shared_fitness
from sae_merging.runtime.context import Member, Outcome, PopulationState, RunContext, Sample
from sae_merging.runtime.fitness import Scores
from sae_merging.runtime.selection import select

SAEState = PopulationState


class SAE(SAESettings):
    """See the module docstring. Parameters mirror `conf/method/sae.yaml` (checked by
    `SAESettings`)."""

    state_type = SAEState

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merger is None:
            self.merger = merge_fns.linear
        self.recipe = ChildRecipe(self.merger, self.pruner, self.stream_parents_above_gb)

    # --- the generation loop's interface ---------------------------------------------------

    def initialize(self, ctx: RunContext) -> SAEState:
        """Generation 0: the dense experts plus their pruned variants."""
        state = SAEState(generation=0, members=[])
        s_min, s_max = self.schedule.range
        n = self.n_sparse_variants
        rates = (
            [s_min + (s_max - s_min) * i / (n - 1) for i in range(n)] if n > 1 else [(s_min + s_max) / 2] * n
        )
        for index, name in enumerate(ctx.models.expert_names):
            dense = ctx.load_expert(index)
            self._add(ctx, state, dense, origin=f"expert:{name}", rate=0.0)
            for rate in rates:
                with ctx.timer.section("prune"):
                    variant = self.pruner.prune(dense, rate)
                self._add(ctx, state, variant, origin=f"variant:{name}", rate=rate)
        state.metrics = self._summary(ctx, state, ctx.sample(0), rate=None, ratios=[])
        return state

    def step(self, ctx: RunContext, state: SAEState, generation: int) -> SAEState:
        rate = self.schedule.rate(generation)
        sample = ctx.generation_sample(generation, self.redraw_opt)
        scores = {m.ident: ctx.score(m, sample) for m in state.members}
        rng = ctx.rng("pairs", generation)
        order = list(range(len(state.members)))
        rng.shuffle(order)
        pairs = [
            (state.members[order[2 * i]], state.members[order[2 * i + 1]]) for i in range(len(order) // 2)
        ]
        dense_reference = self._original_dense(ctx) if self.redense == "original_dense" else None
        ratios: list[float] = []
        children: list[Member] = []
        for a, b in pairs:
            tensors, used = self._make_child(
                ctx, a, b, scores[a.ident].mean, scores[b.ident].mean, rate, dense_reference
            )
            ratios.extend(used)
            child = self._add(
                ctx, state, tensors, "child", rate, generation, parents=[a.ident, b.ident], join=False
            )
            scores[child.ident] = ctx.score(child, sample)
            children.append(child)
        for child in children:
            self._compete(ctx, state, child, scores)
        state.generation = generation
        state.metrics = self._summary(ctx, state, sample, rate, ratios, scores)
        return state

    def best(self, ctx: RunContext, state: SAEState) -> Outcome:
        """The archive member chosen by the selection rule (`selection=`)."""
        return select(ctx, state.members, ctx.generation_sample(state.generation, self.redraw_opt))

    # --- pieces ----------------------------------------------------------------------------

    def fitness(self, scores: Scores, member: Member) -> float:
        return scores.mean + self.sparsity_weight * member.sparsity

    def _add(
        self,
        ctx: RunContext,
        state: SAEState,
        tensors,
        origin: str,
        rate: float,
        generation: int = 0,
        parents=None,
        join: bool = True,
    ) -> Member:
        """Store an individual; generation-0 members join the archive, children compete first."""
        member = Member(
            ident=f"g{generation:03d}-{state.next_id:04d}",
            origin=origin,
            generation=generation,
            rate=rate,
            sparsity=self.scoring.of_model(tensors, self.pruner),
            parents=list(parents or []),
        )
        state.next_id += 1
        ctx.store.save(member.ident, tensors)
        if join:
            state.members.append(member)
        return member

    def _original_dense(self, ctx: RunContext) -> Mapping[str, torch.Tensor]:
        """The uniform average of the original dense experts (the re-dense source), computed
        tensor by tensor on access when the experts are large enough to stream."""
        experts = [ctx.expert_tensors(i) for i in range(len(ctx.models.experts))]
        average = experts[0].map(
            lambda name, t: merge_fns.weighted_average([t] + [e[name] for e in experts[1:]])
        )
        return self.recipe.parent(average, ctx.expert_nbytes())

    def _make_child(self, ctx: RunContext, a: Member, b: Member, p_a: float, p_b: float, rate: float, dense):
        """The child of two archive members (see `child`); parents larger than
        `stream_parents_above_gb` are streamed from the archive, smaller ones loaded."""
        parent_a, parent_b = (
            self.recipe.parent(ctx.store.open(m.ident), ctx.store.nbytes(m.ident)) for m in (a, b)
        )
        child = self.child(parent_a, parent_b, p_a, p_b, rate, dense, ctx.timer)
        return child.tensors, list(child.weights.values())

    def child(self, parent_a, parent_b, p_a: float, p_b: float, rate: float, dense=None, timer=None) -> Child:
        """SAE's child (`merging.child.ChildRecipe`): both parents pruned to `rate`, each tensor
        mixed with eq. 5's ratio from the parents' task scores `p_a`, `p_b` and the pruned
        parents' sparsity, merged (`merger`), re-densed from `dense` (redense=original_dense),
        the child pruned to `rate`. Parents are dicts (in memory) or LazyTensors (streamed)."""
        return self.recipe.make(parent_a, parent_b, self.mixing_ratios(p_a, p_b), rate, dense, timer)

    def mixing_ratios(self, p_a: float, p_b: float):
        """Eq. 5 as a weight rule: lambda_l from the task scores and the pruned parents'
        sparsity (one value per model, or per tensor under scoring=local)."""
        alpha = self.sparsity_weight

        def ratios(parent_a, parent_b) -> dict[str, float]:
            s_a = self.scoring.per_tensor(parent_a, self.pruner)
            s_b = self.scoring.per_tensor(parent_b, self.pruner)
            return {n: merge_fns.mixing_ratio(p_a, alpha * s_a[n], p_b, alpha * s_b[n]) for n in s_a}

        return ratios

    def _compete(self, ctx: RunContext, state: SAEState, child: Member, scores: dict[str, Scores]) -> None:
        """The child joins while the archive has room; then it takes the place of the weakest
        member if it is fitter (`worst`), or the lowest shared fitness leaves (`shared`)."""
        if len(state.members) < self.archive_size:
            state.members.append(child)
            return
        candidates = state.members + [child]
        if self.competition == "worst":
            values = [self.fitness(scores[m.ident], m) for m in candidates]
        else:
            shared = shared_fitness([scores[m.ident].flat() for m in candidates], self.sharing_alpha)
            values = [f + self.sparsity_weight * m.sparsity for f, m in zip(shared, candidates, strict=True)]
        # the child leaves on a tie: an incumbent is only replaced by a strictly fitter child
        loser = min(range(len(candidates)), key=lambda i: (values[i], i != len(candidates) - 1))
        if loser < len(state.members):
            ctx.retire(state.members[loser].ident)
            state.members[loser] = child
        else:
            ctx.retire(child.ident)

    def _summary(self, ctx, state, sample: Sample, rate, ratios, scores=None) -> dict[str, Any]:
        scores = scores or {m.ident: ctx.score(m, sample) for m in state.members}
        fitness = [self.fitness(scores[m.ident], m) for m in state.members]
        best = max(state.members, key=lambda m: scores[m.ident].mean)
        sparsity = [m.sparsity for m in state.members]
        summary = {
            "sparsity_rate": rate,
            "fitness/best": max(fitness),
            "fitness/mean": statistics.fmean(fitness),
            "fitness/worst": min(fitness),
            "best/score": scores[best.ident].mean,
            **{f"best/{task}": acc for task, acc in scores[best.ident].task_accuracy().items()},
            "best/ident": best.ident,
            "archive/sparsity_min": min(sparsity),
            "archive/sparsity_mean": statistics.fmean(sparsity),
            "archive/sparsity_max": max(sparsity),
            "archive/size": len(state.members),
        }
        if ratios:
            summary.update(
                {
                    "ratio/mean": statistics.fmean(ratios),
                    "ratio/min": min(ratios),
                    "ratio/max": max(ratios),
                    "ratio/std": statistics.pstdev(ratios),
                }
            )
        return summary
