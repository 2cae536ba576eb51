"""The one way two parents make a child: SAE's and M2N2's children, and the benchmark's.

A child is made in four steps, each an option of `ChildRecipe`:

1. **Prune the parents** (temporary copies) to the rate (`pruner`; rate 0 or no pruner: as is).
2. **Weigh each tensor**: a `WeightRule` sees both pruned parents and gives every tensor the
   number the merger takes (SAE: eq. 5's share of parent A from the parents' scores and
   sparsity; M2N2: the crossover's share of parent B).
3. **Merge** tensor by tensor (`merger(a, b, weight)`: eq. 4, attraction, lerp, slerp) and,
   given a `dense` reference, re-dense the positions zero in both parents from it.
4. **Prune the child** to the rate.

Two regimes, one result. A parent given as a `LazyTensors` is *streamed*: never held whole,
each tensor read when a pass reaches it and pruned as it is read, by a plan made in one
streaming pass. A parent given as a dict is held in memory (a tensor is read once, not once per
pass). `parents()` streams both parents above `stream_above_gb`; below it, it loads the first
and streams the second. A parent the recipe loaded is given up as the merge pass goes: the
child is built in the first one's place (each tensor replaced by the child's once merged) and
the second one's tensors are dropped once merged. So making a child holds one model and a few
tensors (the child; below the threshold, the loaded parent turning into it), never two parents
and the child. Every step is a function of one tensor at a time and the pruning plan depends
only on the values and their order, so every regime gives the same child bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from sae_merging.merging import functions
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.utils.tensorfiles import LazyTensors
from sae_merging.utils.timing import Timer

Tensors = Mapping[str, torch.Tensor]
Merger = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# (pruned parent A, pruned parent B) -> the merger's weight for each tensor
WeightRule = Callable[[Tensors, Tensors], Mapping[str, float]]


def _merges_in_place(merger: Merger) -> bool:
    """Whether the merger is one of `functions.IN_PLACE_MERGERS` (Hydra hands them over as
    bare partials)."""
    while isinstance(merger, partial) and not merger.args and not merger.keywords:
        merger = merger.func
    return merger in functions.IN_PLACE_MERGERS


def _unshared(tensors: Tensors) -> bool:
    """Whether no two tensors share memory (so overwriting one changes no other)."""
    storages = [t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()]
    return len(set(storages)) == len(storages)


class _Loaded(dict):
    """A parent read into memory by `ChildRecipe.parent`: nobody else holds it."""


@dataclass(frozen=True)
class Child:
    """The child's tensors (in memory) and the weight each tensor was merged with."""

    tensors: dict[str, torch.Tensor]
    weights: dict[str, float]


@dataclass(frozen=True)
class ChildRecipe:
    """How a child is made (see the module docstring)."""

    merger: Merger = functions.linear
    pruner: MagnitudePruner | None = None
    stream_above_gb: float = 2.0

    def __post_init__(self) -> None:
        if self.stream_above_gb < 0:
            raise ValueError(f"stream_parents_above_gb={self.stream_above_gb}: must be >= 0")

    def streams(self, nbytes: int) -> bool:
        """Whether a model of `nbytes` is streamed rather than held in memory."""
        return nbytes > self.stream_above_gb * 1e9

    def parent(self, tensors: LazyTensors, nbytes: int) -> Tensors:
        """A model as the recipe takes it (a parent, a base, a re-dense source): the lazy
        tensors themselves when the model is large enough to stream, else all of them read into
        memory (a copy the recipe owns, so it is pruned where it lies instead of beside a second
        copy, and given up tensor by tensor as a child is made of it)."""
        return tensors if self.streams(nbytes) else _Loaded(tensors.items())

    def parents(self, parent_a: LazyTensors, nbytes_a: int, parent_b: LazyTensors) -> tuple[Tensors, Tensors]:
        """Two parents as `make` takes them: the first as `parent` has it (read into memory
        below `stream_above_gb`: the child is built in its place), the second streamed in
        either case (read tensor by tensor in each pass), so a child made of them holds one
        model, never a second parent beside the child."""
        return self.parent(parent_a, nbytes_a), parent_b

    def pruned(self, tensors: Tensors, rate: float) -> Tensors:
        """A parent pruned to `rate`: a lazy pruned view when it streams, in place when the
        recipe loaded it, a copy otherwise (the caller's dict is left as it was)."""
        if self.pruner is None or rate <= 0:
            return tensors
        if isinstance(tensors, LazyTensors):
            return self.pruner.pruned(tensors, rate)
        if isinstance(tensors, _Loaded):
            return self.pruner.prune_(tensors, rate)
        return self.pruner.prune(tensors, rate)

    def make(
        self,
        parent_a: Tensors,
        parent_b: Tensors,
        weights: WeightRule,
        rate: float = 0.0,
        dense: Tensors | None = None,
        timer: Timer | None = None,
    ) -> Child:
        """The child of two parents (dicts in memory, or `LazyTensors` streamed)."""

        def section(name: str):
            return timer.section(name) if timer is not None else nullcontext()

        with section("prune"):
            pruned_a, pruned_b = self.pruned(parent_a, rate), self.pruned(parent_b, rate)
            weight = dict(weights(pruned_a, pruned_b))
        with section("merge"):
            # loaded parents are given up as the pass goes: the child takes the first one's
            # place, tensor by tensor, and the second one's tensors are dropped once merged
            child = pruned_a if isinstance(pruned_a, _Loaded) else {}
            given_up = pruned_b if isinstance(pruned_b, _Loaded) and pruned_b is not pruned_a else None
            # with no re-dense source nor shared storage, an elementwise merger writes the child
            # into the loaded parent's own tensors (no new tensor per merge)
            in_place = child is pruned_a and dense is None and _merges_in_place(self.merger)
            in_place = in_place and _unshared(pruned_a)
            for name in list(pruned_a):
                tensor_a = pruned_a[name]
                tensor_b = given_up.pop(name) if given_up is not None else pruned_b[name]
                if in_place and tensor_a.is_contiguous() and tensor_b.shape == tensor_a.shape:
                    merged = self.merger(tensor_a, tensor_b, weight[name], out=tensor_a)
                else:
                    merged = self.merger(tensor_a, tensor_b, weight[name])
                if dense is not None:
                    merged = functions.fill_zeros(merged, tensor_a, tensor_b, dense[name])
                del tensor_a, tensor_b
                child[name] = merged
        if self.pruner is not None and rate > 0:
            with section("prune"):
                self.pruner.prune_(child, rate)
        return Child(child, weight)
