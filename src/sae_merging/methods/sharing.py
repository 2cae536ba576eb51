"""Fitness sharing and mate choice over per-example correctness (M2N2, Abrantes et al. 2025).

Each example is a resource: its credit is split among the members that solve it, so a member
that alone solves hard examples is worth keeping even with a lower accuracy. Used by M2N2 and
by SAE's `competition=shared`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from sae_merging.runtime.fitness import Scores, aggregate


def shared_matrix(correct: Sequence[Sequence[bool]], alpha: float = 1.0) -> list[list[float]]:
    """F_kj = s_kj / (sum_k' s_k'j)^alpha: member k's share of example j. An example nobody
    solves gives no credit (and no division by 0)."""
    if not correct:
        return []
    solvers = [sum(column) for column in zip(*correct, strict=True)]
    return [
        [1.0 / solvers[j] ** alpha if solved and solvers[j] > 0 else 0.0 for j, solved in enumerate(row)]
        for row in correct
    ]


def shared_scores(scores: Sequence[Scores], alpha: float = 1.0, how: str = "task_mean") -> list[float]:
    """Fitness sharing on the scale of the task score p: per task, member k's shares summed and
    divided by the task's item count, then aggregated over tasks like p (`how`). When no two
    members solve the same example this equals p itself, so alpha * S added to it (SAE's
    `competition=shared`) weighs what it weighs beside p in eq. 5 and the `worst` fitness."""
    if not scores:
        return []
    tasks = list(scores[0].correct)
    per_task: list[dict[str, float]] = [{} for _ in scores]
    for task in tasks:
        shares = shared_matrix([s.correct[task] for s in scores], alpha)
        for k, row in enumerate(shares):
            per_task[k][task] = sum(row) / len(row) if row else 0.0
    counts: Mapping[str, int] = scores[0].counts()
    return [aggregate(values, counts, how) for values in per_task]


def attraction(shares: Sequence[Sequence[float]], first: int) -> list[float]:
    """How much each member would add to `first` as a mate: sum_j max(0, F_ij - F_first,j),
    its share of the examples where it does better than `first` (0 for `first` itself)."""
    own = shares[first]
    return [sum(max(0.0, f - g) for f, g in zip(row, own, strict=True)) for row in shares]


def weighted_index(rng: random.Random, weights: Sequence[float], exclude: int | None = None) -> int:
    """An index drawn with probability proportional to `weights`; when they are all zero (no
    member solves anything, or no mate adds anything) the draw is uniform over the indices other
    than `exclude`, instead of the 0/0 the plain normalisation would give."""
    if sum(weights) > 0:
        return rng.choices(range(len(weights)), weights=weights)[0]
    others = [i for i in range(len(weights)) if i != exclude] or list(range(len(weights)))
    return rng.choice(others)


def weakest(values: Sequence[float]) -> int:
    """Index of the lowest value, the last entry (a newcomer) losing ties: an incumbent is only
    replaced by a strictly fitter newcomer."""
    last = len(values) - 1
    return min(range(len(values)), key=lambda i: (values[i], i != last))
