"""Pure per-tensor merge functions.

Each takes tensors of one parameter (one per model) and returns the merged tensor; none keeps
state, so a model of any size merges by streaming tensors through them one at a time. All
arithmetic happens in float32 and the result takes the first input's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def mixing_ratio(score_a: float, weight_a: float, score_b: float, weight_b: float) -> float:
    """Paper eq. 5: lambda = (s_A + w_A) / ((s_A + w_A) + (s_B + w_B)), the share of parent A.

    When both sides are zero (two failing, dense parents) the parents share equally.
    """
    a, b = score_a + weight_a, score_b + weight_b
    if a + b <= 0:
        return 0.5
    return a / (a + b)


def linear(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    """Paper eq. 4: ratio * A + (1 - ratio) * B."""
    return (ratio * _f32(a) + (1.0 - ratio) * _f32(b)).to(a.dtype)


def attraction(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    """Eq. 4 where both parents are non-zero; where exactly one parent is zero, the other
    parent's value is taken unscaled (a zero of one parent "attracts" the other's weight,
    paper section 2.3); zero where both are zero."""
    merged = ratio * _f32(a) + (1.0 - ratio) * _f32(b)
    merged = torch.where(a == 0, _f32(b), merged)
    merged = torch.where(b == 0, _f32(a), merged)
    return merged.to(a.dtype)


def fill_zeros(child: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Re-dense from the original dense model: positions zero in both parents take `dense`."""
    return torch.where((a == 0) & (b == 0), dense.to(child.dtype), child)


def task_arithmetic(
    base: torch.Tensor, experts: Sequence[torch.Tensor], scale: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """theta_0 + scale * sum_i w_i (theta_i - theta_0) (Ilharco et al. 2023; mergekit's
    `task_arithmetic` with weights w_i, default 1)."""
    weights = weights or [1.0] * len(experts)
    base32 = _f32(base)
    delta = sum(w * (_f32(e) - base32) for w, e in zip(weights, experts, strict=True))
    return (base32 + scale * delta).to(base.dtype)


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """sum_i w_i theta_i / sum_i w_i (model soup; mergekit's `linear` with normalize)."""
    weights = list(weights or [1.0] * len(tensors))
    total = sum(weights)
    if total == 0:
        raise ValueError("weighted_average: weights sum to zero")
    merged = sum(w * _f32(t) for w, t in zip(weights, tensors, strict=True)) / total
    return merged.to(tensors[0].dtype)
