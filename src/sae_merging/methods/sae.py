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

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.merging.child import Child, ChildRecipe, Pruned
from sae_merging.methods.archive import RESCORED, Archive
from sae_merging.methods.settings import SAESettings
from sae_merging.methods.sharing import shared_scores
from sae_merging.runtime.context import Ask, Candidate, Member, PopulationState, RunContext, Told
from sae_merging.runtime.fitness import Scores

Span = tuple[float, float] | None  # the archive's (min, max) S under sparsity_scale=archive

SAEState = PopulationState


@dataclass
class ChildRound:
    """What a generation's round of children passes to `tell`: the pairs, each child's record
    of the mechanism (metrics.jsonl's `pairs`), the schedule's rate and the archive's S span."""

    generation: int
    rate: float
    span: Span
    pairs: list[tuple[Member, Member]]
    records: list[dict[str, Any]]


class SAE(SAESettings, Archive):
    """See the module docstring. Parameters mirror `conf/method/sae.yaml` (checked by
    `SAESettings`); the archive and its competition: `methods.archive`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merger is None:
            self.merger = merge_fns.linear
        self.recipe = ChildRecipe(self.merger, self.pruner, self.stream_parents_above_gb)

    # --- ask / tell (`methods.base`) -------------------------------------------------------

    def ask(self, ctx: RunContext, state: SAEState, generation: int) -> Ask:
        """Generation 0: the dense experts and their pruned variants, scored on draw 0. Then
        per generation two rounds: the archive re-scored on the generation's sample, then one
        child per random pair of members."""
        self._bind(ctx)
        if generation == 0:
            return Ask(ctx.sample(0), new=self._founders(ctx, state))
        if "scores" not in state.pending:
            return self.rescore(ctx, state, generation)
        return self._children(ctx, state, generation)

    def tell(self, ctx: RunContext, state: SAEState, ask: Ask, told: Told) -> SAEState:
        if ask.note == RESCORED:  # the archive's scores on this generation's sample
            state.pending["scores"] = dict(told.scores)
        elif ask.note is None:  # generation 0
            state.members = list(told.made)
            state.metrics = self._summary(state, None, [], told.scores)
            state.generation = 0
        else:
            self._compete(ctx, state, ask, told)
        return state

    def _compete(self, ctx: RunContext, state: SAEState, ask: Ask, told: Told) -> None:
        """The children made (all, or those the budget allowed) are scored against their
        parents' fitness, then compete for places one after another."""
        round_: ChildRound = ask.note
        scores = state.pending.pop("scores") | told.scores
        records = round_.records[: len(told.made)]
        for child, record, parents in zip(told.made, records, round_.pairs, strict=False):
            f_child = self.fitness(scores[child.ident], child, round_.span)
            record["child"] = child.ident
            record["gain"] = [f_child - self.fitness(scores[m.ident], m, round_.span) for m in parents]
        for child, record in zip(told.made, records, strict=False):
            record["accepted"] = self.admit(state, child, scores) is not child
        state.generation = round_.generation
        state.metrics = self._summary(state, round_.rate, records, scores)

    def _founders(self, ctx: RunContext, state: SAEState) -> list[Candidate]:
        """Each expert, streamed from its file, then its variants pruned at rates evenly spaced
        over the schedule's range."""
        s_min, s_max = self.schedule.range
        n = self.n_sparse_variants
        rates = (
            [s_min + (s_max - s_min) * i / (n - 1) for i in range(n)] if n > 1 else [(s_min + s_max) / 2] * n
        )
        found = []
        for index, name in enumerate(ctx.models.expert_names):
            dense = ctx.expert_tensors(index)
            member = state.new_member(f"expert:{name}", 0)
            found.append(Candidate(member, self._measured(member, lambda dense=dense: (dense, None))))
            for rate in rates:
                member = state.new_member(f"variant:{name}", 0, rate=rate)

                def variant(dense=dense, rate=rate):
                    with ctx.timer.section("prune"):
                        tensors, plan = self.pruner.pruned(dense, rate)
                    return tensors, plan.zero_counts

                found.append(Candidate(member, self._measured(member, variant)))
        return found

    def _children(self, ctx: RunContext, state: SAEState, generation: int) -> Ask:
        """One child per random pair of the archive (ratios from the pair's scores on this
        generation's sample), pruned to the schedule's rate."""
        rate = self.schedule.rate(generation)
        scores = state.pending["scores"]
        span = self.span(state.members)
        rng = ctx.rng("pairs", generation)
        order = list(range(len(state.members)))
        rng.shuffle(order)
        pairs = [
            (state.members[order[2 * i]], state.members[order[2 * i + 1]]) for i in range(len(order) // 2)
        ]
        dense_reference = self._original_dense(ctx) if self.redense == "original_dense" else None
        records: list[dict[str, Any]] = []
        children: list[Candidate] = []
        for a, b in pairs:
            p_a, p_b = self.task_score(scores[a.ident]), self.task_score(scores[b.ident])
            record: dict[str, Any] = {"parents": [a.ident, b.ident], "p": [p_a, p_b]}
            member = state.new_member("child", generation, rate=rate, parents=[a.ident, b.ident])

            def child(a=a, b=b, p_a=p_a, p_b=p_b, record=record):
                made = self._make_child(ctx, a, b, p_a, p_b, rate, dense_reference, span, record)
                return made.tensors, made.zero_counts

            records.append(record)
            children.append(Candidate(member, self._measured(member, child)))
        note = ChildRound(generation, rate, span, pairs, records)
        return Ask(self.sample_of(ctx, generation), new=children, note=note)

    def _measured(self, member: Member, build):
        """A recipe that builds `(tensors, zero_counts)` and notes the member's sparsity S (from
        the pruning plan's zero counts when given, so the tensors are not read again)."""

        def make():
            tensors, zero_counts = build()
            member.sparsity = self.scoring.of_model(self.pruner.targets(tensors), self.pruner, zero_counts)
            return tensors

        return make

    # --- pieces ----------------------------------------------------------------------------

    def task_score(self, scores: Scores) -> float:
        """p: the task score of eq. 3 and eq. 5 under `aggregate`."""
        return scores.value(self.aggregate)

    def span(self, members: Sequence[Member]) -> Span:
        """(min, max) of the members' S under sparsity_scale=archive (None: raw)."""
        if self.sparsity_scale == "raw" or not members:
            return None
        values = [m.sparsity for m in members]
        return min(values), max(values)

    def scaled(self, sparsity: float, span: Span) -> float:
        """S as eq. 5 and the fitness weigh it: raw, or min-max normalized over the archive
        (0 at its least sparse member, 1 at its sparsest, clipped to [0, 1]; 0 when all are
        equally sparse), so that S spans what p can span and alpha sets their exchange rate."""
        if span is None:
            return sparsity
        low, high = span
        return min(1.0, max(0.0, (sparsity - low) / (high - low))) if high > low else 0.0

    def fitness(self, scores: Scores, member: Member, span: Span = None) -> float:
        return self.task_score(scores) + self.sparsity_weight * self.scaled(member.sparsity, span)

    def competition_values(self, candidates: list[Member], scores: Mapping[str, Scores]) -> list[float]:
        """What `admit` ranks: p + alpha * S (`worst`), or the shared fitness (on p's scale,
        see `shared_scores`) + alpha * S (`shared`); S scaled over the candidates
        (`sparsity_scale`)."""
        span = self.span(candidates)
        if self.competition == "worst":
            return [self.fitness(scores[m.ident], m, span) for m in candidates]
        shared = shared_scores([scores[m.ident] for m in candidates], self.sharing_alpha, self.aggregate)
        return [
            f + self.sparsity_weight * self.scaled(m.sparsity, span)
            for f, m in zip(shared, candidates, strict=True)
        ]

    def protected(self, members: Sequence[Member], scores: Mapping[str, Scores]) -> set[int]:
        """Archive places no child may take: the `elitism` members of best task score p (the
        replacement ranks p + alpha * S, which can evict the best-performing dense members for
        lack of sparsity) and, with `keep_experts`, the dense experts."""
        p = [self.task_score(scores[m.ident]) for m in members]
        kept = set(sorted(range(len(members)), key=lambda i: -p[i])[: self.elitism])
        if self.keep_experts:
            kept |= {i for i, m in enumerate(members) if m.origin.startswith("expert:")}
        return kept

    def _bind(self, ctx: RunContext) -> None:
        """pruner.target=task_vector measures against the base: bind it once per run (also when
        a run resumes after generation 0), tensor by tensor when models stream."""
        if self.pruner.needs_base and self.pruner.base is None:
            base = self.recipe.parent(ctx.base_tensors(self.name), ctx.expert_nbytes())
            self.pruner = self.pruner.with_base(base)
            self.recipe = dataclasses.replace(self.recipe, pruner=self.pruner)

    def _original_dense(self, ctx: RunContext) -> Mapping[str, torch.Tensor]:
        """The uniform average of the original dense experts (the re-dense source), computed
        tensor by tensor on access when the experts are large enough to stream."""
        experts = [ctx.expert_tensors(i) for i in range(len(ctx.models.experts))]
        average = experts[0].map(
            lambda name, t: merge_fns.weighted_average([t] + [e[name] for e in experts[1:]])
        )
        return self.recipe.parent(average, ctx.expert_nbytes())

    def _make_child(
        self,
        ctx: RunContext,
        a: Member,
        b: Member,
        p_a: float,
        p_b: float,
        rate: float,
        dense,
        span=None,
        record=None,
    ):
        """The child of two archive members (see `child`, a `Child`); parents larger than
        `stream_parents_above_gb` are streamed from the archive; smaller ones: the first loaded
        (the child is built in its place), the second streamed (`ChildRecipe.parents`)."""
        parent_a, parent_b = self.recipe.parents(
            ctx.store.open(a.ident), ctx.store.nbytes(a.ident), ctx.store.open(b.ident)
        )
        sparsity = None
        if self.omega_from == "archive":
            sparsity = (self._archive_sparsity(parent_a, a), self._archive_sparsity(parent_b, b))
        recipe = self.recipe.on(ctx.device)  # the child is made on the run's device
        rule = self.mixing_ratios(p_a, p_b, sparsity, span, record)
        child = recipe.make(parent_a, parent_b, rule, rate, dense, ctx.timer)
        if record is not None:
            record["ratios"] = list(child.weights.values())
        return child

    def _archive_sparsity(self, parent, member: Member) -> dict[str, float]:
        """S of a parent as it stands in the archive, per tensor (the stored model value under
        global scoring; read from the parent under local)."""
        if self.scoring.granularity == "global":
            return dict.fromkeys(parent, member.sparsity)
        return self.scoring.per_tensor(self.pruner.targets(parent), self.pruner)

    def child(
        self,
        parent_a,
        parent_b,
        p_a: float,
        p_b: float,
        rate: float,
        dense=None,
        timer=None,
        sparsity=None,
        span: Span = None,
        record: dict | None = None,
    ) -> Child:
        """SAE's child (`merging.child.ChildRecipe`): both parents pruned to `rate`, each tensor
        mixed with eq. 5's ratio from the parents' task scores `p_a`, `p_b` and sparsity (the
        pruned parents', or `sparsity` = (S_A, S_B) per tensor as the archive holds them),
        merged (`merger`), re-densed from `dense` (redense=original_dense), the child pruned to
        `rate`. Parents are dicts (in memory) or LazyTensors (streamed)."""
        rule = self.mixing_ratios(p_a, p_b, sparsity, span, record)
        return self.recipe.make(parent_a, parent_b, rule, rate, dense, timer)

    def mixing_ratios(self, p_a: float, p_b: float, sparsity=None, span: Span = None, record=None):
        """Eq. 5 as a weight rule: lambda_l from the task scores and omega_l = alpha * S_l (one
        S per model, or per tensor under scoring=local; of the pruned parents unless `sparsity`
        is given; scaled by `span` under sparsity_scale=archive). The parents' mean omega goes
        into `record["omega"]`."""
        alpha = self.sparsity_weight

        def ratios(parent_a: Pruned, parent_b: Pruned) -> dict[str, float]:
            if sparsity is None:
                s_a, s_b = (
                    self.scoring.per_tensor(self.pruner.targets(p.tensors), self.pruner, p.zero_counts)
                    for p in (parent_a, parent_b)
                )
            else:
                s_a, s_b = sparsity
            w_a = {n: alpha * self.scaled(v, span) for n, v in s_a.items()}
            w_b = {n: alpha * self.scaled(v, span) for n, v in s_b.items()}
            if record is not None:
                record["omega"] = [statistics.fmean(w_a.values()), statistics.fmean(w_b.values())]
            return {n: merge_fns.mixing_ratio(p_a, w_a[n], p_b, w_b[n]) for n in s_a}

        return ratios

    def _summary(self, state: SAEState, rate, pairs, scores: Mapping[str, Scores]) -> dict[str, Any]:
        """The generation's line of metrics.jsonl, with the mechanism's diagnostics: every
        mixing ratio (`ratio/values`, a W&B histogram) and its quantiles, each pair's p, omega,
        child and child-minus-parent fitness (`pairs`), the experts still in the archive."""
        span = self.span(state.members)
        fitness = [self.fitness(scores[m.ident], m, span) for m in state.members]
        best = self.best(state, scores)
        sparsity = [m.sparsity for m in state.members]
        experts = [m.origin for m in state.members if m.origin.startswith("expert:")]
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
            "archive/experts": experts,
            "archive/experts_alive": len(experts),
        }
        ratios = [r for pair in pairs for r in pair["ratios"]]
        if ratios:
            q05, q50, q95 = (float(q) for q in np.quantile(ratios, [0.05, 0.5, 0.95]))
            summary.update(
                {
                    "ratio/mean": statistics.fmean(ratios),
                    "ratio/min": min(ratios),
                    "ratio/max": max(ratios),
                    "ratio/std": statistics.pstdev(ratios),
                    "ratio/q05": q05,
                    "ratio/q50": q50,
                    "ratio/q95": q95,
                    "ratio/values": [round(r, 6) for r in ratios],
                    "omega/gap_mean": statistics.fmean(abs(p["omega"][0] - p["omega"][1]) for p in pairs),
                    "child/gain_vs_best_parent": statistics.fmean(min(p["gain"]) for p in pairs),
                    "child/gain_vs_mean_parent": statistics.fmean(statistics.fmean(p["gain"]) for p in pairs),
                    "children/accepted": sum(bool(p["accepted"]) for p in pairs),
                    "pairs": [{k: v for k, v in p.items() if k != "ratios"} for p in pairs],
                }
            )
        return summary
