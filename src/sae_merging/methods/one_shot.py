"""One-shot merges (mergekit's definitions): linear, task arithmetic, TIES and DARE.

Each is a pure per-tensor function (`sae_merging.merging.functions`) plus its parameters. The
scaling factor lambda is either fixed (`scaling_factor`) or chosen from `scaling_grid` on
optimization data (draw 0, or the validation set under `selection=validation`): every grid
point is asked for as a candidate and scored by the loop, so its evaluations count in the
budget like any search's. Point k is generation k, which gives one `metrics.jsonl` line per
point and lets an interrupted grid search resume; only the best model so far is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.methods.base import Strategy
from sae_merging.methods.settings import (
    DareSettings,
    LinearSettings,
    OneShotSettings,
    TaskArithmeticSettings,
    TiesSettings,
)
from sae_merging.runtime.context import Ask, Candidate, Member, PopulationState, RunContext, Sample, Told
from sae_merging.runtime.selection import choice_sample

DRAW = 0  # the optimization draw every grid point is scored on (unless selection=validation)


@dataclass
class GridState(PopulationState):
    """The population state plus the factor and scores of each grid point; `members` holds
    the best model so far."""

    points: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**super().to_json(), "points": self.points}

    @classmethod
    def from_json(cls, data: Mapping) -> GridState:
        base = PopulationState.from_json(data)
        return cls(base.generation, base.members, base.next_id, base.metrics, points=list(data["points"]))

    @property
    def best_point(self) -> dict[str, Any]:
        """The point with the highest optimization score (the earlier one on a tie)."""
        return max(self.points, key=lambda p: p["score"])


class OneShotMerge(OneShotSettings, Strategy):
    """A merge of the experts (and of the base, when `needs_base`) by `merge_tensor`, at a fixed
    scaling factor or at the best one of a grid. Subclasses define the per-tensor merge; their
    settings (`sae_merging.methods.settings`) check the arguments."""

    state_type = GridState
    fixed_steps = True  # a grid has as many points as it has, whatever the budget

    @property
    def factors(self) -> list[float | None]:
        grid = [self.scaling_factor] if self.scaling_factor is not None else list(self.scaling_grid)
        return [None if f is None else float(f) for f in grid]

    @property
    def steps(self) -> int:
        return len(self.factors) - 1

    def merge_tensor(
        self,
        ctx: RunContext,
        name: str,
        base: torch.Tensor | None,
        experts: list[torch.Tensor],
        factor: float | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    # --- ask / tell (`methods.base`) -------------------------------------------------------

    def ask(self, ctx: RunContext, state: GridState, generation: int) -> Ask:
        """Grid point `generation`, merged and scored on the choice's data (draw 0, or the
        validation set)."""
        factor = self.factors[generation]
        member = Member(ident=f"grid-{generation:03d}", origin=self.name, extra={"scaling_factor": factor})
        make = partial(self.merge, ctx, factor)
        return Ask(choice_sample(ctx, ctx.sample(DRAW)), new=[Candidate(member, make)], note=generation)

    def tell(self, ctx: RunContext, state: GridState, ask: Ask, told: Told) -> GridState:
        """Keep the point if it is the best so far (the earlier one on a tie)."""
        member = told.made[0]
        scores = told[member]
        point = {"scaling_factor": member.extra["scaling_factor"], "score": scores.mean}
        point["accuracy"] = scores.task_accuracy()
        state.points.append(point)
        if state.best_point is point:
            state.members = [member]
        best = state.best_point
        state.generation = ask.note
        state.metrics = {
            "scaling_factor": point["scaling_factor"],
            "score": point["score"],
            **{f"score/{task}": acc for task, acc in point["accuracy"].items()},
            "best/scaling_factor": best["scaling_factor"],
            "best/score": best["score"],
            **{f"best/{task}": acc for task, acc in best["accuracy"].items()},
            "best/ident": state.members[0].ident,
        }
        return state

    def candidates(self, ctx: RunContext, state: GridState) -> tuple[list[Member], Sample]:
        """The best grid point (already scored on the choice's data), and draw 0."""
        return state.members, ctx.sample(DRAW)

    def details(self, state: GridState, chosen: Member) -> dict[str, Any]:
        grid = {
            f"{p['scaling_factor']:g}": p["score"] for p in state.points if p["scaling_factor"] is not None
        }
        return {"scaling_factor": state.best_point["scaling_factor"], "grid": grid}

    # --- pieces ----------------------------------------------------------------------------

    def merge(self, ctx: RunContext, factor: float | None) -> dict[str, torch.Tensor]:
        """The merged model at scaling factor `factor`."""
        base = ctx.load_base(self.name) if self.needs_base else None
        experts = [ctx.load_expert(i) for i in range(len(ctx.models.experts))]
        with ctx.timer.section("merge"):
            return {
                name: self.merge_tensor(
                    ctx, name, None if base is None else base[name], [e[name] for e in experts], factor
                )
                for name in ctx.merge_names()
            }


class Linear(OneShotMerge, LinearSettings):
    """Weighted average of the experts, sum_i w_i theta_i / sum_i w_i (mergekit's `linear`); no
    base and no scaling factor. `weights: null` is the uniform average."""

    def merge_tensor(self, ctx, name, base, experts, factor):
        return merge_fns.weighted_average(experts, self.weights)


class TaskArithmetic(OneShotMerge, TaskArithmeticSettings):
    """theta_0 + lambda * sum_i w_i (theta_i - theta_0) (mergekit's `task_arithmetic`)."""

    def merge_tensor(self, ctx, name, base, experts, factor):
        return merge_fns.task_arithmetic(base, experts, factor, self.weights)


class Ties(OneShotMerge, TiesSettings):
    """TIES (mergekit's `ties`): per-tensor magnitude top-k of the task vectors (k = density * n),
    sign election by the sum, disjoint mean, times lambda."""

    def merge_tensor(self, ctx, name, base, experts, factor):
        return merge_fns.ties(base, experts, self.density, factor, self.weights)


class Dare(OneShotMerge, DareSettings):
    """DARE (mergekit's `dare_linear`): each task-vector entry kept with probability density and
    rescaled by 1/density, then task arithmetic. The drop masks depend on (seed, tensor name)
    only, so every grid point merges the same sparsified task vectors."""

    def merge_tensor(self, ctx, name, base, experts, factor):
        generator = ctx.torch_generator("dare", name)
        return merge_fns.dare(base, experts, self.density, factor, generator, self.weights, self.rescale)
