"""How sparsity enters SAE (`scoring=`): a measure (`scorer=`) at a granularity, one value per
model (`global`) or one per tensor (`local`), over the tensors the pruner prunes."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from sae_merging.sparsity.measures import SparsityStats, pooled, zero_count
from sae_merging.sparsity.settings import SparsityScoringSettings


class Prunable(Protocol):
    """What scoring needs of a pruner: which tensors it prunes."""

    def prunable(self, name: str) -> bool: ...


class SparsityScoring(SparsityScoringSettings):
    """A sparsity measure (`scorer`: a function of SparsityStats) at a `granularity` (global:
    one value per model; local: one per tensor), measured over the tensors the pruner prunes;
    `SparsityScoringSettings` checks the arguments."""

    def per_tensor(self, tensors: Mapping[str, torch.Tensor], pruner: Prunable) -> dict[str, float]:
        """The sparsity each tensor contributes to eq. 5 (the model's value everywhere under
        global scoring)."""
        if self.granularity == "local":
            return {name: self.scorer(self._stats(tensors, name)) for name in tensors}
        return dict.fromkeys(tensors, self.of_model(tensors, pruner))

    def model_value(self, stats: Mapping[str, SparsityStats], pruner: Prunable) -> float:
        """S(theta) for the fitness: the pooled measure (global) or the mean per-tensor measure
        (local) over prunable tensors."""
        prunable = [s for name, s in stats.items() if pruner.prunable(name)]
        if self.granularity == "global":
            return self.scorer(pooled(prunable))
        return statistics.fmean(self.scorer(s) for s in prunable) if prunable else 0.0

    def of_model(self, tensors: Mapping[str, torch.Tensor], pruner: Prunable) -> float:
        """S(theta), reading only the tensors it is measured over."""
        stats = {
            n: self._stats(tensors, n) for n in tensors if self.granularity == "local" or pruner.prunable(n)
        }
        return self.model_value(stats, pruner)

    def _stats(self, tensors: Mapping[str, torch.Tensor], name: str) -> SparsityStats:
        """A tensor's stats; for `zero_count`, from the zero counts a pruner's plan left on the
        model (`zero_counts`: name -> (entries, zeros) of the tensors it pruned, exact) without
        reading the tensor."""
        known = getattr(tensors, "zero_counts", None)
        if known is not None and name in known and _reads_counts_only(self.scorer):
            return SparsityStats(*known[name])
        return self.stats(tensors[name])

    def stats(self, tensor: torch.Tensor) -> SparsityStats:
        """What the scorer reads of a tensor: only its counts for `zero_count` (one cheap pass
        instead of float32 sums), all the sums otherwise."""
        return SparsityStats.counts(tensor) if _reads_counts_only(self.scorer) else SparsityStats.of(tensor)


def _reads_counts_only(scorer: Callable) -> bool:
    """Whether the scorer is `zero_count` (Hydra hands it over as a bare functools.partial)."""
    while isinstance(scorer, functools.partial) and not scorer.args and not scorer.keywords:
        scorer = scorer.func
    return scorer is zero_count
