"""How sparsity enters SAE (`scoring=`): a measure (`scorer=`) at a granularity, one value per
model (`global`) or one per tensor (`local`), over the tensors the pruner prunes."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Protocol

import torch

from sae_merging.sparsity.measures import SparsityStats, pooled, zero_count
from sae_merging.sparsity.settings import SparsityScoringSettings

ZeroCounts = Mapping[str, tuple[int, int]]  # name -> (entries, exact zeros)


class Prunable(Protocol):
    """What scoring needs of a pruner: which tensors it prunes."""

    def prunable(self, name: str) -> bool: ...


class SparsityScoring(SparsityScoringSettings):
    """A sparsity measure (`scorer`: a function of SparsityStats) at a `granularity` (global:
    one value per model; local: one per tensor), measured over the tensors the pruner prunes;
    `SparsityScoringSettings` checks the arguments."""

    def per_tensor(
        self, tensors: Mapping[str, torch.Tensor], pruner: Prunable, zero_counts: ZeroCounts | None = None
    ) -> dict[str, float]:
        """The sparsity each tensor contributes to eq. 5 (the model's value everywhere under
        global scoring); `zero_counts` as in `of_model`."""
        if self.granularity == "local":
            return {name: self.scorer(self._stats(tensors, name, zero_counts)) for name in tensors}
        return dict.fromkeys(tensors, self.of_model(tensors, pruner, zero_counts))

    def model_value(self, stats: Mapping[str, SparsityStats], pruner: Prunable) -> float:
        """S(theta) for the fitness: the pooled measure (global) or the mean per-tensor measure
        (local) over prunable tensors."""
        prunable = [s for name, s in stats.items() if pruner.prunable(name)]
        if self.granularity == "global":
            return self.scorer(pooled(prunable))
        return statistics.fmean(self.scorer(s) for s in prunable) if prunable else 0.0

    def of_model(
        self, tensors: Mapping[str, torch.Tensor], pruner: Prunable, zero_counts: ZeroCounts | None = None
    ) -> float:
        """S(theta), reading only the tensors it is measured over; `zero_counts`: name ->
        (entries, zeros) known exactly (a pruning plan's, `ModelPlan.zero_counts`), so a
        zero-count measure reads none of those tensors."""
        stats = {
            n: self._stats(tensors, n, zero_counts)
            for n in tensors
            if self.granularity == "local" or pruner.prunable(n)
        }
        return self.model_value(stats, pruner)

    def _stats(
        self, tensors: Mapping[str, torch.Tensor], name: str, zero_counts: ZeroCounts | None
    ) -> SparsityStats:
        """A tensor's stats: for `zero_count`, from its known zero counts when given."""
        if zero_counts and name in zero_counts and self.scorer is zero_count:
            return SparsityStats(*zero_counts[name])
        return self.stats(tensors[name])

    def stats(self, tensor: torch.Tensor) -> SparsityStats:
        """What the scorer reads of a tensor: only its counts for `zero_count` (one cheap pass
        instead of float32 sums), all the sums otherwise."""
        return SparsityStats.counts(tensor) if self.scorer is zero_count else SparsityStats.of(tensor)
