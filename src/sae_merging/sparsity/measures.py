"""Sparsity measures in [0, 1] (`scorer=`), per tensor and pooled over a model.

- `zero_count`: the fraction of exact zeros.
- `hoyer` (`scorer=magnitude`): Hoyer's measure (sqrt(n) - L1/L2) / (sqrt(n) - 1): 0 for a
  tensor whose entries all have one magnitude, 1 for a tensor with a single non-zero; an
  all-zero tensor counts 1. (Named for Hoyer in the code so that it is not confused with the
  magnitude *pruner*; the config keeps the user-facing name `scorer=magnitude`.)

Both pool over several tensors from running sums (count, zeros, L1, squared L2), so a model's
measure streams tensor by tensor and equals the measure of all its tensors concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

# float dtypes counted on their bit patterns, as integers of the same width
_KEYED = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
_PART = 1 << 20  # entries per step (a reused buffer of a few MB)


def _zeros_of_floats(tensor: torch.Tensor) -> int:
    """Exact zeros (+0 and -0) of a float tensor: entries whose bits, sign bit cleared, are 0."""
    ints = _KEYED[tensor.dtype]
    flat = tensor.detach().reshape(-1).view(ints).numpy()
    magnitude = np.iinfo(flat.dtype).max  # every bit but the sign bit
    buffer = np.empty(min(_PART, flat.size), dtype=flat.dtype)
    nonzero = 0
    for start in range(0, flat.size, _PART):
        part = flat[start : start + _PART]
        nonzero += int(np.count_nonzero(np.bitwise_and(part, magnitude, out=buffer[: part.size])))
    return flat.size - nonzero


@dataclass(frozen=True)
class SparsityStats:
    """Sufficient statistics of a tensor (or of several, by addition)."""

    count: int = 0
    zeros: int = 0
    l1: float = 0.0
    l2_squared: float = 0.0

    @classmethod
    def of(cls, tensor: torch.Tensor) -> SparsityStats:
        t = tensor.detach().to(torch.float32)
        return cls(t.numel(), int((t == 0).sum()), float(t.abs().sum()), float(t.pow(2).sum()))

    @classmethod
    def counts(cls, tensor: torch.Tensor) -> SparsityStats:
        """Entries and exact zeros only (the sums left 0), as `zero_count` needs them. Float
        tensors are counted on their bit patterns with NumPy (torch's `count_nonzero` of a bf16
        tensor with zeros spread at random ran 7x slower)."""
        if tensor.dtype in _KEYED and tensor.device.type == "cpu":
            return cls(tensor.numel(), _zeros_of_floats(tensor))
        return cls(tensor.numel(), tensor.numel() - int(torch.count_nonzero(tensor)))

    def __add__(self, other: SparsityStats) -> SparsityStats:
        return SparsityStats(
            self.count + other.count,
            self.zeros + other.zeros,
            self.l1 + other.l1,
            self.l2_squared + other.l2_squared,
        )


def zero_count(stats: SparsityStats) -> float:
    """The fraction of exact zeros."""
    return stats.zeros / stats.count if stats.count else 0.0


def hoyer(stats: SparsityStats) -> float:
    """Hoyer's sparsity (sqrt(n) - L1/L2) / (sqrt(n) - 1), clipped to [0, 1]; an all-zero or
    single-entry tensor counts as fully sparse."""
    if stats.count == 0:
        return 0.0
    if stats.l2_squared == 0 or stats.count == 1:
        return 1.0
    root_n = math.sqrt(stats.count)
    value = (root_n - stats.l1 / math.sqrt(stats.l2_squared)) / (root_n - 1)
    return min(1.0, max(0.0, value))


# user-facing names (`scorer=`) -> measures
SCORERS = {"zero_count": zero_count, "magnitude": hoyer}


def pooled(stats: Iterable[SparsityStats]) -> SparsityStats:
    return sum(stats, SparsityStats())
