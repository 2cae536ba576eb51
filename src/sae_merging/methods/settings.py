"""The methods' settings (`method=`), checked before anything heavy is imported.

Each method class derives from its settings here (see `sae_merging.utils.settings`);
`problems(models)` holds the checks that need the model pool (how many experts, a base),
which are still made from settings alone, before any weight is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sae_merging.tasks.settings import AGGREGATES
from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

REDENSE = ("parents", "original_dense")
COMPETITIONS = ("worst", "shared")
OMEGA_FROM = ("pruned", "archive")
SPARSITY_SCALES = ("raw", "archive")
INTERPOLATIONS = ("lerp", "slerp", "slerp_flat")
SPLIT_AT = ("tensor", "entry")
INIT_VELOCITIES = ("zero", "random")
RANDOM_SCOPES = ("per_element", "per_tensor", "per_particle")


@dataclass(eq=False)
class SAESettings(Settings):
    schedule: Any
    pruner: Any
    scoring: Any
    merger: Callable | None = None
    archive_size: int = 6
    n_sparse_variants: int = 2
    sparsity_weight: float = 0.1
    redense: str = "parents"
    competition: str = "worst"
    sharing_alpha: float = 1.0
    redraw_opt: bool = True
    stream_parents_above_gb: float = 2.0
    name: str = "sae"  # `sae_dense`: the same loop with sparsity switched off (a control)
    aggregate: str = "instances"
    omega_from: str = "pruned"
    sparsity_scale: str = "raw"
    elitism: int = 0
    keep_experts: bool = False

    def __post_init__(self) -> None:
        self.merger = check.bare(self.merger)
        check.text("name", self.name)
        check.choice("aggregate", self.aggregate, AGGREGATES)
        check.choice("omega_from", self.omega_from, OMEGA_FROM)
        check.choice("sparsity_scale", self.sparsity_scale, SPARSITY_SCALES)
        check.integer("elitism", self.elitism, 0)
        check.flag("keep_experts", self.keep_experts)
        check.integer("archive_size", self.archive_size, 2)
        check.integer("n_sparse_variants", self.n_sparse_variants, 0)
        check.number("sparsity_weight", self.sparsity_weight, 0)
        check.choice("redense", self.redense, REDENSE)
        check.choice("competition", self.competition, COMPETITIONS)
        check.number("sharing_alpha", self.sharing_alpha, 0)
        check.flag("redraw_opt", self.redraw_opt)
        check.number("stream_parents_above_gb", self.stream_parents_above_gb, 0)

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def problems(self, models) -> list[str]:
        """Generation 0 (the experts and their sparse variants) must fit in the archive, the
        places kept from replacement must leave one open to children, and task-vector pruning
        needs a base."""
        n = len(models.expert_names)
        needed = n * (1 + self.n_sparse_variants)
        found = []
        if needed > self.archive_size:
            found.append(
                f"method.archive_size={self.archive_size}: must hold the {n} experts and their "
                f"{self.n_sparse_variants} sparse variants each (>= {needed})"
            )
        kept = self.elitism + (n if self.keep_experts else 0)
        if kept >= self.archive_size:
            found.append(
                f"method.elitism={self.elitism} (keep_experts={self.keep_experts}): keeps {kept} of "
                f"the archive's {self.archive_size} places; at least one must stay open to children"
            )
        if getattr(self.pruner, "needs_base", False) and not models.has_base:
            found.append("pruner.target='task_vector': needs a base model: set model.base=PATH_OR_ID")
        return found

    def warnings(self, models) -> list[str]:
        """An archive much larger than generation 0 is legal but costly: say what it implies."""
        size = len(models.expert_names) * (1 + self.n_sparse_variants)
        if self.archive_size <= 2 * size:
            return []
        members, generation = size, 0
        while members < self.archive_size and generation < self.steps:
            members, generation = min(self.archive_size, members + members // 2), generation + 1
        fills = (
            f"fills by generation {generation}"
            if members >= self.archive_size
            else f"never fills ({members} members by generation {generation})"
        )
        return [
            f"method.archive_size={self.archive_size}: generation 0 holds {size} members; the archive "
            f"{fills}; a full archive scores {self.archive_size} members and makes "
            f"{self.archive_size // 2} children per generation"
        ]


@dataclass(eq=False)
class M2N2Settings(Settings):
    steps: int = 12
    children_per_step: int = 3
    archive_size: int = 6
    alpha: float = 1.0
    interpolation: str = "lerp"
    split_at: str = "tensor"
    redraw_opt: bool = False
    stream_parents_above_gb: float = 2.0
    name = "m2n2"

    def __post_init__(self) -> None:
        check.number("stream_parents_above_gb", self.stream_parents_above_gb, 0)
        check.integer("steps", self.steps, 1)
        check.integer("children_per_step", self.children_per_step, 1)
        check.integer("archive_size", self.archive_size, 2)
        check.number("alpha", self.alpha, 0)
        check.choice("interpolation", self.interpolation, INTERPOLATIONS)
        check.choice("split_at", self.split_at, SPLIT_AT)
        check.flag("redraw_opt", self.redraw_opt)

    def problems(self, models) -> list[str]:
        n = len(models.expert_names)
        if self.archive_size < n:
            return [f"method.archive_size={self.archive_size}: must hold the {n} experts"]
        return []


@dataclass(eq=False)
class PSOSettings(Settings):
    steps: int = 10
    inertia: float = 0.2
    c1: float = 2.0
    c2: float = 2.0
    dare_drop: float = 0.8
    include_base: bool = True
    swarm_size: int | None = None
    init_velocity: str = "zero"
    random_scope: str = "per_element"
    clamp: float | None = None
    redraw_opt: bool = False

    def __post_init__(self) -> None:
        check.integer("steps", self.steps, 1)
        check.number("inertia", self.inertia)
        check.number("c1", self.c1, 0)
        check.number("c2", self.c2, 0)
        check.rate("dare_drop", self.dare_drop)
        check.flag("include_base", self.include_base)
        check.integer("swarm_size", self.swarm_size, 2, optional=True)
        check.choice("init_velocity", self.init_velocity, INIT_VELOCITIES)
        check.choice("random_scope", self.random_scope, RANDOM_SCOPES)
        check.number("clamp", self.clamp, 0, low_open=True, optional=True)
        check.flag("redraw_opt", self.redraw_opt)

    def head(self, expert_names: Sequence[str]) -> list[str]:
        """The particles every swarm has: the base (when included) and the experts."""
        return (["base"] if self.include_base else []) + [f"expert:{n}" for n in expert_names]

    def problems(self, models) -> list[str]:
        found = [] if models.has_base else ["method 'pso' needs a base model: set model.base=PATH_OR_ID"]
        head = self.head(models.expert_names)
        if self.swarm_size is not None and self.swarm_size < len(head):
            found.append(
                f"method.swarm_size={self.swarm_size}: must hold {' + '.join(head)} (>= {len(head)})"
            )
        return found


@dataclass(eq=False)
class OneShotSettings(Settings):
    """A merge at a fixed scaling factor or at the best point of a grid."""

    default_name = "one_shot"
    needs_base = True

    scaling_factor: float | None = None
    scaling_grid: Sequence[float] = (0.3, 0.5, 0.7, 1.0)
    weights: Sequence[float] | None = None
    name: str | None = None  # a variant's own row name (e.g. task arithmetic at a fixed factor)

    def __post_init__(self) -> None:
        check.text("name", self.name, optional=True)
        self.name = self.name or self.default_name
        check.number("scaling_factor", self.scaling_factor, optional=True)
        check.numbers("scaling_grid", self.scaling_grid)
        if self.scaling_factor is None and not list(self.scaling_grid):
            raise check.SettingError("scaling_grid", [], "must not be empty when scaling_factor is null")
        check.numbers("weights", self.weights, 0, optional=True, nonempty=True)
        if self.weights is not None and sum(self.weights) == 0:
            raise check.SettingError("weights", list(self.weights), "must not sum to zero")

    def problems(self, models) -> list[str]:
        found = []
        if self.needs_base and not models.has_base:
            found.append(f"method {self.name!r} needs a base model: set model.base=PATH_OR_ID")
        n = len(models.expert_names)
        if self.weights is not None and len(self.weights) != n:
            found.append(f"method.weights={list(self.weights)!r}: needs one weight per expert ({n})")
        return found


@dataclass(eq=False)
class LinearSettings(OneShotSettings):
    default_name = "linear"
    needs_base = False

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        super().__init__(scaling_factor=None, scaling_grid=[None], weights=weights)

    def __post_init__(self) -> None:  # one merge, without a factor
        self.name = self.default_name
        check.numbers("weights", self.weights, 0, optional=True, nonempty=True)
        if self.weights is not None and sum(self.weights) == 0:
            raise check.SettingError("weights", list(self.weights), "must not sum to zero")


@dataclass(eq=False)
class TaskArithmeticSettings(OneShotSettings):
    default_name = "task_arithmetic"


@dataclass(eq=False)
class SparsifiedSettings(OneShotSettings):
    """A task-vector merge that keeps a fraction `density` of each task vector."""

    density: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        check.number("density", self.density, 0, 1, low_open=True)


@dataclass(eq=False)
class TiesSettings(SparsifiedSettings):
    default_name = "ties"
    # the disjoint mean averages the kept deltas and trimming removes mass: a higher grid than
    # task arithmetic's (the TIES paper uses lambda ~ 1)
    scaling_grid: Sequence[float] = (0.5, 0.7, 1.0, 1.5)


@dataclass(eq=False)
class DareSettings(SparsifiedSettings):
    default_name = "dare"
    rescale: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check.flag("rescale", self.rescale)


@dataclass(eq=False)
class ExpertSettings(Settings):
    name = "expert"
    index: int = 0

    def __post_init__(self) -> None:
        check.integer("index", self.index, 0)

    def problems(self, models) -> list[str]:
        names = list(models.expert_names)
        if self.index >= len(names):
            return [
                f"method.index={self.index}: must be in 0..{len(names) - 1} (experts: {', '.join(names)})"
            ]
        return []


@dataclass(eq=False)
class BestExpertSettings(Settings):
    """No arguments: the experts are the pool's, the choice is the run's `selection`."""

    name = "best_expert"
