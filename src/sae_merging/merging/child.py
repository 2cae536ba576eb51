"""The one way two parents make a child: SAE's and M2N2's children, and the benchmark's.

A child is made in four steps, each an option of `ChildRecipe`:

1. **Prune the parents** (temporary copies) to the rate (`pruner`; rate 0 or no pruner: as is).
2. **Weigh each tensor**: a `WeightRule` sees both pruned parents and gives every tensor the
   number the merger takes (SAE: eq. 5's share of parent A from the parents' scores and
   sparsity; M2N2: the crossover's share of parent B).
3. **Merge** tensor by tensor (`merger(a, b, weight)`: eq. 4, attraction, lerp, slerp) and,
   given a `dense` reference, re-dense the positions zero in both parents from it.
4. **Prune the child** to the rate.

As passes: each parent's plan is one sample plus one counting pass (`MagnitudePruner.
model_plan`), read as the parent is stored: from the mapped file without a copy where it is
one, and an archive member's packed tensors not unpacked at all (the count runs over their
values, their zeros come from the mask, the sample reads the sampled entries alone,
`utils.packed.PackedTensor`); the weight rule reads the plans' zero counts (no tensor, for
zero-count scoring); then **one pass per tensor** does the rest of steps 1-4 chunk by chunk
for an elementwise merger: both parents' chunks (a packed one's unpacked chunk by chunk)
pruned by their plans into small buffers, merged into the child's tensor, and counted for the
child's global threshold (a search started from the merged values at the sample positions,
`RidingSearch`); the child is then zeroed where it lies by the exact cuts. A merger that
needs whole tensors (slerp) gets them pruned whole, and the child is planned after.

Two regimes, one result. A parent given as a `LazyTensors` is *streamed*: never held whole,
read tensor by tensor in each pass (mapped views of its file where it has one). A parent given
as a dict is held in memory. `parents()` streams both parents above `stream_above_gb`, and a
mapped one of dense tensors or a packed archive member (read as stored, `reads_packed`) at any
size; below it a parent whose reads cost a computation (a packed member for a merger that needs
whole tensors, an average) is read into memory once. A parent the recipe loaded is given up as
the merge pass goes: the child is built in the first one's place (each tensor overwritten by the
child's) and the second one's tensors are dropped once merged. So making a child holds one
model and a few chunks, never two parents and the child. Every step is a function of one entry
(elementwise mergers) or one tensor at a time and the pruning plans depend only on the values
and their order, so every regime gives the same child bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from sae_merging.merging import functions
from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner, ModelPlan, RidingSearch, SamplePositions, Scratch
from sae_merging.utils import kernels, packed
from sae_merging.utils.settings import bare
from sae_merging.utils.tensorfiles import LazyTensors, numel, peek, release, stored
from sae_merging.utils.timing import Timer

RELEASE_ENTRIES = 1 << 22  # entries between page releases of a mapped parent within a tensor
Tensors = Mapping[str, torch.Tensor]
Merger = Callable[..., torch.Tensor]
ZeroCounts = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class Pruned:
    """A parent as a weight rule sees it: pruned to the rate (a lazy view: each tensor pruned
    when read) and the exact zero counts its plan leaves (name -> (entries, zeros); empty when
    unknown), so a zero-count measure reads no tensor."""

    tensors: Tensors
    zero_counts: ZeroCounts = field(default_factory=dict)


# (pruned parent A, pruned parent B) -> the merger's weight for each tensor
WeightRule = Callable[[Pruned, Pruned], Mapping[str, float]]


def _unshared(tensors: Tensors) -> bool:
    """Whether no two tensors share memory (so overwriting one changes no other)."""
    storages = [t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()]
    return len(set(storages)) == len(storages)


class _Loaded(dict):
    """A parent read into memory by `ChildRecipe.parent`: nobody else holds it."""


@dataclass(frozen=True)
class Child:
    """The child's tensors (in memory), the weight each tensor was merged with, and the zero
    counts its pruning plan left (name -> (entries, zeros); empty when it was not pruned)."""

    tensors: dict[str, torch.Tensor]
    weights: dict[str, float]
    zero_counts: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildRecipe:
    """How a child is made (see the module docstring)."""

    merger: Merger = functions.linear
    pruner: MagnitudePruner | None = None
    stream_above_gb: float = 2.0
    # where the child is made: the parents' chunks are moved there, mixed and pruned there, and
    # the child's tensors lie there (the archive writes them back); the CPU runs the same code
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if self.stream_above_gb < 0:
            raise ValueError(f"stream_parents_above_gb={self.stream_above_gb}: must be >= 0")
        object.__setattr__(self, "merger", bare(self.merger))
        object.__setattr__(self, "device", torch.device(self.device))

    def on(self, device: torch.device | str) -> ChildRecipe:
        """The same recipe making its children on `device`."""
        return dataclasses.replace(self, device=torch.device(device))

    @property
    def elementwise(self) -> bool:
        """Whether the merger works entry by entry (so by chunks, into an output it reads)."""
        return getattr(self.merger, "elementwise", False)

    def streams(self, nbytes: int) -> bool:
        """Whether a model of `nbytes` is streamed rather than held in memory."""
        return nbytes > self.stream_above_gb * 1e9

    @property
    def reads_packed(self) -> bool:
        """Whether a merge pass reads a packed parent as stored, chunk by chunk (an elementwise
        merger, its plans ranking the weights themselves)."""
        return self.elementwise and not (self.pruner is not None and self.pruner.needs_base)

    def parent(self, tensors: LazyTensors, nbytes: int) -> Tensors:
        """A model as the recipe takes it (a parent, a base, a re-dense source): the lazy
        tensors themselves when the model is large enough to stream, is a mapped file of dense
        tensors (a pass over it copies nothing) or holds packed tensors the passes read as stored (counted and
        sampled without unpacking, unpacked chunk by chunk by the merge), else all of them read
        into memory (a copy the recipe owns, so it is pruned where it lies instead of beside a
        second copy, and given up tensor by tensor as a child is made of it)."""
        read_in_place = tensors.packs and self.reads_packed or tensors.mapped and not tensors.packs
        if self.streams(nbytes) or read_in_place:
            return tensors
        return _Loaded(tensors.items())

    def parents(self, parent_a: LazyTensors, nbytes_a: int, parent_b: LazyTensors) -> tuple[Tensors, Tensors]:
        """Two parents as `make` takes them: the first as `parent` has it (read into memory
        below `stream_above_gb`: the child is built in its place), the second streamed in
        either case (read tensor by tensor in each pass), so a child made of them holds one
        model, never a second parent beside the child."""
        return self.parent(parent_a, nbytes_a), parent_b

    def _pruning(self, rate: float) -> bool:
        return self.pruner is not None and rate > 0

    def _view(self, tensors: Tensors, plan: ModelPlan | None) -> Pruned:
        """A parent pruned by its plan, as a lazy view (each tensor pruned when read)."""
        if plan is None:
            return Pruned(tensors)
        names = list(tensors)
        return Pruned(LazyTensors(names, lambda n: self.pruner.apply(plan, n, tensors[n])), plan.zero_counts)

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

        pruning = self._pruning(rate)
        with section("prune"):
            plan_a = self.pruner.model_plan(parent_a, rate) if pruning else None
            plan_b = self.pruner.model_plan(parent_b, rate) if pruning else None
            weight = dict(weights(self._view(parent_a, plan_a), self._view(parent_b, plan_b)))
        with section("merge"):
            child, search = _Merge(self, parent_a, parent_b, plan_a, plan_b, weight, rate, dense).run()
        zero_counts: dict[str, tuple[int, int]] = {}
        if pruning:
            with section("prune"):
                zero_counts = self._prune_child(child, rate, search)
        return Child(child, weight, zero_counts)

    def _prune_child(
        self, child: dict[str, torch.Tensor], rate: float, search: RidingSearch | None
    ) -> dict[str, tuple[int, int]]:
        """The child zeroed where it lies: by the cuts the merge pass counted, else by its own
        plan (a sample and a counting pass); returns its zero counts."""
        if search is None:
            return self.pruner.prune_(child, rate).zero_counts
        names = list(search.index)
        threshold = search.finish(lambda: (child[name] for name in names))
        k = search.search.k
        counts = {}
        for name, cut in zip(names, threshold.cuts(k), strict=True):
            child[name] = cut.prune(child[name], in_place=True)
            counts[name] = (child[name].numel(), cut.zeros)
        return counts


class _Merge:
    """The merge pass of `ChildRecipe.make`: one pass per tensor (see the module docstring)."""

    def __init__(self, recipe, parent_a, parent_b, plan_a, plan_b, weight, rate, dense) -> None:
        self.recipe, self.merger = recipe, recipe.merger
        self.a, self.b, self.plan_a, self.plan_b = parent_a, parent_b, plan_a, plan_b
        self.weight, self.rate, self.dense = weight, rate, dense
        # loaded parents are given up as the pass goes: the child takes the first one's place,
        # tensor by tensor, and the second one's tensors are dropped once merged
        self.child = parent_a if isinstance(parent_a, _Loaded) else {}
        self.given_up = parent_b if isinstance(parent_b, _Loaded) and parent_b is not parent_a else None
        # with no re-dense source nor shared storage, an elementwise merger writes the child
        # into the loaded parent's own tensors (no new tensor per merge)
        self.in_place = (
            self.child is parent_a and dense is None and recipe.elementwise and _unshared(parent_a)
        )
        self.device = recipe.device
        self.in_place = self.in_place and self.device.type == "cpu"  # (a loaded parent lies on the CPU)
        pruner = recipe.pruner
        pruning = recipe._pruning(rate)
        # chunk by chunk: an elementwise merger, and pruning (if any) of the weights themselves
        self.fused = recipe.elementwise and not (pruning and pruner.needs_base)
        self.scratch = [Scratch(), Scratch(), Scratch()]  # parent A's chunks, B's, the child's counts
        self.search = None
        if pruning and self.fused and dense is None and pruner.granularity == "global":
            self.search = self._search()

    def _search(self) -> RidingSearch | None:
        """The child's global threshold search, started from the merged values at the sample
        positions (the parents pruned there by their cuts, ties estimated: the count is exact)."""
        names = [name for name in self.a if self.recipe.pruner.prunable(name)]
        sizes, dtypes, parts = [], [], []
        for name in names:
            sizes.append(numel(self.a, name))
        total, k = sum(sizes), round(self.rate * sum(sizes))
        if not 0 < k < total:
            return None
        positions = SamplePositions(total)
        for name, size in zip(names, sizes, strict=True):
            where = positions(size)
            values = []
            for parent, plan in ((self.a, self.plan_a), (self.b, self.plan_b)):
                sample = packed.entries(stored(parent, name), where)  # (a packed one: those alone)
                release(parent, name)
                values.append(self.recipe.pruner.apply(plan, name, sample, in_place=True))
            merged = self.merger(values[0], values[1], self.weight[name])
            dtypes.append(merged.dtype)
            parts.append(merged.float().abs())
        return RidingSearch(torch.cat(parts), names, dtypes, sizes, k, estimated=True)

    def run(self) -> tuple[dict[str, torch.Tensor], RidingSearch | None]:
        # a streamed parent is read as stored: a packed archive member unpacked chunk by chunk
        read = stored if self.fused else peek
        for name in list(self.a):
            tensor_a = self.a[name] if isinstance(self.a, dict) else read(self.a, name)
            tensor_b = self.given_up.pop(name) if self.given_up is not None else read(self.b, name)
            same = tensor_b.shape == tensor_a.shape
            if self.fused and same:
                merged = self._chunked(name, tensor_a, tensor_b)
            else:
                merged = self._whole(name, packed.dense(tensor_a), packed.dense(tensor_b))
                if self.search is not None and name in self.search.index:
                    for _, part in magnitude.chunks(merged):
                        self.search.count(name, part, self.scratch[2])
            del tensor_a, tensor_b
            for parent in (self.a, self.b):
                release(parent, name)
            self.child[name] = merged
        return self.child, self.search

    def _chunked(self, name: str, tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> torch.Tensor:
        """One tensor of the child, chunk by chunk: both parents' chunks pruned, merged into
        the child's tensor (the loaded parent's own, in place), re-densed, counted."""
        if self.in_place and tensor_a.is_contiguous():
            out = tensor_a
        elif self.device.type == "cpu":
            out = kernels.fresh(tensor_a.shape, tensor_a.dtype)
        else:
            out = torch.empty(tensor_a.shape, dtype=tensor_a.dtype, device=self.device)
        flat = out.view(-1)
        dense = peek(self.dense, name).reshape(-1) if self.dense is not None else None
        counting = self.search is not None and name in self.search.index
        parts_a = _pruned_chunks(self.plan_a, name, tensor_a, self.scratch[0], self.device)
        parts_b = _pruned_chunks(self.plan_b, name, tensor_b, self.scratch[1], self.device)
        released = 0
        for (start, part_a), (_, part_b) in zip(parts_a, parts_b, strict=True):
            stop = start + part_a.numel()
            part = flat[start:stop]
            self.merger(part_a, part_b, self.weight[name], out=part)
            if dense is not None:
                functions.fill_zeros(part, part_a, part_b, dense[start:stop].to(self.device), out=part)
            if counting:
                self.search.count(name, part, self.scratch[2])
            if stop - released >= RELEASE_ENTRIES:  # mapped pages read leave as the pass goes
                for parent in (self.a, self.b):
                    release(parent, name, released, stop)
                released = stop
        if self.dense is not None:
            release(self.dense, name)
        return out

    def _whole(self, name: str, tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> torch.Tensor:
        """One tensor of the child from whole pruned tensors (a merger that needs them whole)."""
        pruner = self.recipe.pruner
        loaded = isinstance(self.a, _Loaded) and self.device.type == "cpu"
        tensor_a, tensor_b = tensor_a.to(self.device), tensor_b.to(self.device)
        if self.plan_a is not None:
            tensor_a = pruner.apply(self.plan_a, name, tensor_a, in_place=loaded)
            tensor_b = pruner.apply(self.plan_b, name, tensor_b, in_place=self.given_up is not None)
        if self.in_place and tensor_a.is_contiguous() and tensor_b.shape == tensor_a.shape:
            merged = self.merger(tensor_a, tensor_b, self.weight[name], out=tensor_a)
        else:
            merged = self.merger(tensor_a, tensor_b, self.weight[name])
        if self.dense is not None:
            merged = functions.fill_zeros(merged, tensor_a, tensor_b, self.dense[name].to(self.device))
        return merged


def _pruned_chunks(plan: ModelPlan | None, name: str, tensor: torch.Tensor, scratch: Scratch, device):
    """(start, chunk) pairs of a tensor on `device`, pruned by its cut (into a scratch buffer),
    or as is (flat slices: no copy where the tensor lies on `device`)."""
    cut = plan.cuts.get(name) if plan is not None else None
    if cut is not None:
        return cut.chunks(tensor, scratch, device=device)
    return magnitude.chunks(tensor, device)
