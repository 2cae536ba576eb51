"""Magnitude pruning (`pruner=magnitude`): zero the smallest |w|.

Rate `s` zeroes exactly `round(s * n)` entries: per tensor (`granularity: local`) or over all
prunable tensors at once (`granularity: global`, one threshold). Ties at the threshold are
broken by position (tensor order, then flat index), so the result equals a stable sort of all
magnitudes, without sorting or concatenating anything: the k-th smallest magnitude is found by
a two-pass radix selection over the float bit patterns (a 65,536-bin histogram of the high 16
bits, then of the low 16 bits inside the chosen bin). Memory stays at one tensor plus the
histograms, and every pass streams, so a model larger than RAM prunes from memory-mapped files.

Tensors named by the `skip` patterns (embeddings, norms, biases, LM head by default) are never
pruned and do not count in `n`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

GRANULARITIES = ("local", "global")
DEFAULT_SKIP = ("*embed*", "*norm*", "*.bias", "lm_head*")
_BINS = 1 << 16


def _magnitude_bits(tensor: torch.Tensor) -> torch.Tensor:
    """|w| as int32 bit patterns: for non-negative floats the integer order is the value order."""
    return tensor.detach().reshape(-1).to(torch.float32).abs().view(torch.int32)


def kth_smallest_magnitude(tensors: Callable[[], Iterable[torch.Tensor]], k: int) -> tuple[float, int]:
    """(value, rank) of the k-th smallest |w| (1-based k) over all tensors yielded by
    `tensors()` (called twice, so it may stream), where `rank` = how many entries are smaller."""
    high = torch.zeros(_BINS, dtype=torch.int64)
    for tensor in tensors():
        high += torch.bincount(_magnitude_bits(tensor) >> 16, minlength=_BINS)
    cumulative = high.cumsum(0)
    high_bin = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[high_bin - 1]) if high_bin else 0
    low = torch.zeros(_BINS, dtype=torch.int64)
    for tensor in tensors():
        bits = _magnitude_bits(tensor)
        low += torch.bincount(bits[(bits >> 16) == high_bin] & 0xFFFF, minlength=_BINS)
    cumulative = low.cumsum(0)
    low_bin = int(torch.searchsorted(cumulative, k - below))
    below += int(cumulative[low_bin - 1]) if low_bin else 0
    value = torch.tensor([(high_bin << 16) | low_bin], dtype=torch.int32).view(torch.float32)
    return float(value), below


class _ZeroBudget:
    """Applies one threshold tensor by tensor: zero |w| < value, then the first `ties` entries
    equal to it, in the order tensors are given."""

    def __init__(self, value: float, ties: int) -> None:
        self.value, self.ties = value, ties

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        magnitude = tensor.detach().to(torch.float32).abs()
        zero = magnitude < self.value
        if self.ties > 0:
            equal = (magnitude == self.value).reshape(-1)
            positions = equal.nonzero().reshape(-1)[: self.ties]
            self.ties -= len(positions)
            zero = zero.reshape(-1)
            zero[positions] = True
            zero = zero.reshape(tensor.shape)
        return tensor.masked_fill(zero, 0)


def zero_budget(tensors: Callable[[], Iterable[torch.Tensor]], k: int) -> _ZeroBudget | None:
    """The plan that zeroes exactly the k smallest magnitudes (None when k == 0)."""
    if k <= 0:
        return None
    value, below = kth_smallest_magnitude(tensors, k)
    return _ZeroBudget(value, k - below)


@dataclass(frozen=True)
class MagnitudePruner:
    granularity: str = "local"
    skip: Sequence[str] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"pruner.granularity={self.granularity!r}; valid: {', '.join(GRANULARITIES)}")

    def prunable(self, name: str) -> bool:
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip)

    def prune_tensor(self, tensor: torch.Tensor, rate: float) -> torch.Tensor:
        """Exactly round(rate * n) zeros (more only if the tensor already had more)."""
        plan = zero_budget(lambda: [tensor], round(rate * tensor.numel()))
        return plan.apply(tensor) if plan else tensor

    def prune(self, tensors: Mapping[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
        """A pruned copy of a model's tensors (the input is left untouched)."""
        names = [name for name in tensors if self.prunable(name)]
        if self.granularity == "local":
            pruned = {name: self.prune_tensor(tensors[name], rate) for name in names}
        else:
            total = sum(tensors[name].numel() for name in names)
            plan = zero_budget(lambda: (tensors[name] for name in names), round(rate * total))
            pruned = {name: plan.apply(tensors[name]) if plan else tensors[name] for name in names}
        return {name: pruned.get(name, tensor) for name, tensor in tensors.items()}
