"""Merging and pruning whole checkpoints from safetensors files, tensor by tensor, chunk by chunk.

Inputs are memory-mapped (a `.safetensors` file, or a model folder, sharded or not) and read in
chunks of 1M entries: each chunk is converted into preallocated float32 buffers, combined with
in-place ops and cast into a ring of output buffers that one background thread writes at their
place in the output file (its header is written first: no second copy of the data; pwrite drops
the GIL, so writing a chunk overlaps computing the next). Input pages leave the process soon
after their chunk is done, so resident memory stays at a few chunks whatever the model size.
Allocation, page faults and dtype conversion, not arithmetic, bound such merges; each is paid
once per entry here (mixed-dtype in-place ops are avoided too: on CPU they run several times
slower than a conversion into a buffer followed by a same-dtype op).

Results equal the in-memory references bit for bit: the float32 ops run in the order of
`functions.task_arithmetic` / `functions.linear` (no fused multiply-adds), and pruning uses the
pruner's exact plan (`pruning.magnitude`), ties broken in each file's own tensor order (the
order the model has when loaded in memory).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_merging.merging.functions import mixing_ratio
from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import (
    MagnitudePruner,
    SamplePositions,
    Scratch,
    Selection,
    TensorCut,
    ThresholdSearch,
    chunks,
    count_zeros,
    sample_of,
)
from sae_merging.sparsity.measures import SparsityStats, zero_count
from sae_merging.utils.tensorfiles import (
    ShardedTensorFile,
    TensorFile,
    TensorFileWriter,
    open_tensor_file,
    write_at,
)

TensorSource = TensorFile | ShardedTensorFile
Source = str | os.PathLike | TensorSource
METADATA = {"format": "pt"}
RELEASE_ENTRIES = 1 << 24  # entries between page releases of a mapped input
WRITE_DEPTH = 3  # output buffers in flight


@contextmanager
def _opened(sources: Sequence[Source]) -> Iterator[list[TensorSource]]:
    """The sources as open files; those opened here are closed on exit."""
    with ExitStack() as stack:
        files = []
        for source in sources:
            if isinstance(source, TensorFile | ShardedTensorFile):
                files.append(source)
            else:
                files.append(stack.enter_context(open_tensor_file(source)))
        yield files


def _layout(first: TensorSource, others: Sequence[TensorSource]) -> list[tuple[str, torch.dtype, tuple]]:
    """The first file's layout, after checking every other file has the same tensors."""
    layout = first.layout()
    for other in others:
        missing = [name for name, _, _ in layout if name not in set(other.names())]
        if missing:
            raise ValueError(f"{other.path} lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
        wrong = [name for name, _, shape in layout if other.shape(name) != shape]
        if wrong:
            raise ValueError(f"{other.path}: shapes differ for {wrong[:3]}")
    return layout


def _views(file: TensorSource, names: Sequence[str]) -> Iterator[torch.Tensor]:
    """The tensors as mapped views, each released once the consumer moves past it."""
    for name in names:
        yield file.view(name)
        file.release(name)


class _Releaser:
    """Drops a tensor's mapped input pages behind a chunked pass, every RELEASE_ENTRIES entries
    and at its end (one madvise per file each time; per chunk they would cost ~10% of a merge)."""

    def __init__(self, files: Sequence[TensorSource], name: str, size: int) -> None:
        self.files, self.name, self.size, self.done = files, name, size, 0

    def advance(self, stop: int) -> None:
        if stop - self.done >= RELEASE_ENTRIES or stop >= self.size:
            for file in self.files:
                file.release(self.name, self.done, stop)
            self.done = stop


class _Output:
    """Chunks to write, copied (and cast) into a ring of WRITE_DEPTH buffers and written by one
    background thread; a buffer is reused once its write is done. `write(key, values)` does
    the writing (a part of a TensorFileWriter, or bytes at an offset)."""

    def __init__(self, write: Callable[[Any, torch.Tensor], None]) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sae-merging-writer")
        self._pending: list[Future | None] = [None] * WRITE_DEPTH
        self._buffers: list[dict[torch.dtype, torch.Tensor]] = [{} for _ in range(WRITE_DEPTH)]
        self._slot = 0

    def put(self, key: Any, values: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        slot, self._slot = self._slot, (self._slot + 1) % WRITE_DEPTH
        if self._pending[slot] is not None:
            self._pending[slot].result()
        dtype = dtype or values.dtype
        buffer = self._buffers[slot].get(dtype)
        if buffer is None or buffer.numel() < values.numel():
            buffer = self._buffers[slot][dtype] = torch.empty(
                max(magnitude.CHUNK, values.numel()), dtype=dtype
            )
        target = buffer[: values.numel()].copy_(values.reshape(-1))
        self._pending[slot] = self._pool.submit(self._write, key, target)

    def close(self) -> None:
        """Wait for every write; raise the first error."""
        try:
            for pending in self._pending:
                if pending is not None:
                    pending.result()
        finally:
            self._pool.shutdown(wait=True)


@contextmanager
def _writing(writer: TensorFileWriter) -> Iterator[_Output]:
    """An _Output into `writer`: the file is finished on success, removed on any error."""
    output = _Output(lambda key, values: writer.write_part(*key, values))
    try:
        yield output
        output.close()
    except BaseException:
        try:
            output.close()
        finally:
            writer.abort()
        raise
    writer.close()


def _pruned_chunks(
    tensor: torch.Tensor, cut: TensorCut | None, scratch: Scratch
) -> Iterator[tuple[int, torch.Tensor]]:
    return cut.chunks(tensor, scratch) if cut is not None else chunks(tensor)


def stream_task_arithmetic(
    base_file: Source,
    expert_files: Sequence[Source],
    scale: float,
    out_path: str | os.PathLike,
    weights: Sequence[float] | None = None,
) -> Path:
    """theta_0 + scale * sum_i w_i (theta_i - theta_0), as `functions.task_arithmetic` per
    tensor, written to `out_path` (a safetensors file) in the base's dtypes."""
    weights = list(weights) if weights is not None else [1.0] * len(expert_files)
    if len(weights) != len(expert_files):
        raise ValueError(f"{len(weights)} weights for {len(expert_files)} experts")
    f32, scratch = torch.float32, Scratch()
    with _opened([base_file, *expert_files]) as files:
        layout = _layout(files[0], files[1:])
        with _writing(TensorFileWriter(out_path, METADATA, layout)) as output:
            for name, dtype, _ in layout:
                inputs = [file.view(name).reshape(-1) for file in files]
                size = inputs[0].numel()
                releaser = _Releaser(files, name, size)
                for start in range(0, size, magnitude.CHUNK):
                    stop = min(start + magnitude.CHUNK, size)
                    n = stop - start
                    base32 = scratch.get("base", f32, n).copy_(inputs[0][start:stop])
                    total = scratch.get("acc", f32, n)
                    for i, (weight, expert) in enumerate(zip(weights, inputs[1:], strict=True)):
                        delta = total if i == 0 else scratch.get("delta", f32, n)
                        delta.copy_(expert[start:stop]).sub_(base32)
                        if weight != 1.0:  # 1.0 * x == x: skipping it changes no bit
                            delta.mul_(weight)
                        if i:
                            total.add_(delta)
                    if scale != 1.0:
                        total.mul_(scale)
                    output.put((name, start), total.add_(base32), dtype)
                    releaser.advance(stop)
    return Path(out_path)


def _plan(pruner: MagnitudePruner, file: TensorSource, rate: float) -> dict[str, TensorCut | None]:
    """The pruner's plan for a file's prunable tensors, taken in the file's order (the order
    that breaks ties, as for the model loaded in memory)."""
    names = [name for name in file.names() if pruner.prunable(name)]
    plan = pruner.plan(lambda: _views(file, names), rate, [file.numel(n) for n in names])
    return dict(zip(names, plan.cuts, strict=True))


def stream_prune(
    source: Source, rate: float, pruner: MagnitudePruner, out_path: str | os.PathLike
) -> dict[str, TensorCut | None]:
    """`pruner.prune` of a checkpoint, written to `out_path`; returns each prunable tensor's
    cut (its `zeros` is the pruned tensor's zero count)."""
    scratch = Scratch()
    with _opened([source]) as (file,):
        cuts = _plan(pruner, file, rate)
        with _writing(TensorFileWriter(out_path, METADATA, file.layout())) as output:
            for name in file.names():
                releaser = _Releaser([file], name, file.numel(name))
                for start, values in _pruned_chunks(file.view(name), cuts.get(name), scratch):
                    output.put((name, start), values)
                    releaser.advance(start + values.numel())
    return cuts


def _counts_only(scorer) -> bool:
    """Whether the scorer reads only entry and zero counts (then no pass over values is needed)."""
    while isinstance(scorer, functools.partial) and not scorer.args and not scorer.keywords:
        scorer = scorer.func
    return scorer is zero_count


def _stats(tensor: torch.Tensor, cut: TensorCut | None, counts_only: bool, scratch: Scratch) -> SparsityStats:
    """SparsityStats of `tensor` pruned by `cut`: from the cut's counts when the scorer reads
    only counts, else of the materialized pruned tensor (one tensor at a time)."""
    if counts_only and tensor.is_floating_point():
        zeros = cut.zeros if cut is not None else count_zeros(tensor, scratch)
        return SparsityStats(tensor.numel(), zeros)
    return SparsityStats.of(cut.prune(tensor) if cut is not None else tensor)


@dataclass(frozen=True)
class StreamedChild:
    """What `stream_sae_merge` made: the file, eq. 5's ratio per tensor, and the child's
    sparsity S(theta) as SparsityScoring.of_model gives it."""

    path: Path
    ratios: dict[str, float]
    sparsity: float


def _sparsities(
    file: TensorSource, names: Sequence[str], cuts: dict, scoring, pruner, counts_only: bool, scratch: Scratch
) -> dict[str, float]:
    """Each tensor's sparsity for eq. 5 once pruned by `cuts` (SparsityScoring.per_tensor)."""
    if scoring.granularity == "local":
        values = {}
        for name in names:
            values[name] = scoring.scorer(_stats(file.view(name), cuts.get(name), counts_only, scratch))
            file.release(name)
        return values
    stats = {}
    for name, cut in cuts.items():  # in the file's own order, as the pooled sums run in memory
        stats[name] = _stats(file.view(name), cut, counts_only, scratch)
        file.release(name)
    return dict.fromkeys(names, scoring.model_value(stats, pruner))


class _ChildSearch:
    """The child's global threshold search started before the merge: the child is sampled at
    the parents' sample positions (its value predicted from them, ties at a parent's threshold
    taken as pruned), and the merge pass counts the child's keys for the first request. A
    wrong prediction only costs passes over the written child: the counts decide."""

    def __init__(self, a, b, prunable, cuts_a, cuts_b, ratios, dtypes, k: int) -> None:
        positions = SamplePositions(sum(a.numel(n) for n in prunable))
        parts = []
        for name in prunable:
            where = positions(a.numel(name))
            values = [
                _predicted(file.view(name), where, cuts.get(name))
                for file, cuts in ((a, cuts_a), (b, cuts_b))
            ]
            a.release(name)
            b.release(name)
            ratio = ratios[name]
            merged = (ratio * values[0].float() + (1.0 - ratio) * values[1].float()).to(dtypes[name])
            parts.append(merged.float().abs())
        sizes = [a.numel(n) for n in prunable]
        self.search = ThresholdSearch(
            torch.cat(parts), [dtypes[n] for n in prunable], sizes, k, estimated=True
        )
        self.request = self.search.request()
        self.index = {name: i for i, name in enumerate(prunable)}
        self.counts = [[0] * len(self.request.thresholds) for _ in prunable]
        self.candidates: list[list[torch.Tensor]] = [[] for _ in prunable]
        self.collected: int | None = 0  # None once past MAX_CANDIDATES

    def count(self, name: str, chunk: torch.Tensor, scratch: Scratch) -> None:
        i = self.index[name]
        part, inside = self.request.count(chunk, scratch)
        self.counts[i] = [x + y for x, y in zip(self.counts[i], part, strict=True)]
        if inside is not None and self.collected is not None:
            self.collected += inside.numel()
            self.candidates[i].append(inside)
            if self.collected > magnitude.MAX_CANDIDATES:  # too many to keep: counts still help
                self.candidates, self.collected = [[] for _ in self.candidates], None

    def finish(self) -> Selection | None:
        candidates = None
        if self.request.collect is not None and self.collected is not None:
            candidates = [torch.cat(c) if c else torch.empty(0, dtype=torch.int32) for c in self.candidates]
        return self.search.update(self.request, self.counts, candidates)


def _predicted(view: torch.Tensor, where: torch.Tensor | None, cut: TensorCut | None) -> torch.Tensor:
    """A parent's values at sample positions, zeroed where its cut (roughly, at ties) prunes."""
    values = view.reshape(-1) if where is None else view.reshape(-1)[where]
    if cut is None:
        return values
    keys = sample_of(values, None).to(cut.space.dtype).view(cut.space.int_dtype)
    limit = cut.threshold + (1 if cut.quota else 0)
    return values.masked_fill(keys.to(torch.int32) < limit, 0)


def stream_sae_merge(
    parent_a: Source,
    parent_b: Source,
    score_a: float,
    score_b: float,
    rate: float,
    pruner: MagnitudePruner,
    scoring,
    sparsity_weight: float,
    out_path: str | os.PathLike,
) -> StreamedChild:
    """SAE's child (methods.sae.SAE._make_child with the linear merger): prune both parents to
    `rate`, mix each tensor with eq. 5's ratio from the pruned parents' sparsity (`scoring`, a
    SparsityScoring), merge by eq. 4, prune the child to `rate`; written to `out_path`.

    The dense child goes to `<out_path>.dense` first and is pruned there in place (rewriting
    only its prunable tensors), then renamed, so `out_path` appears complete or not at all.
    Under global pruning the merge pass also counts the child's keys for its threshold, so the
    child is read once more only to be pruned."""
    out_path = Path(out_path)
    dense_path = out_path.with_name(out_path.name + ".dense")
    counts_only = _counts_only(scoring.scorer)
    scratch_a, scratch_b, scratch = Scratch(), Scratch(), Scratch()
    with _opened([parent_a, parent_b]) as (a, b):
        layout = _layout(a, [b])
        names = [name for name, _, _ in layout]
        dtypes = {name: dtype for name, dtype, _ in layout}
        prunable = [name for name in names if pruner.prunable(name)]
        cuts_a, cuts_b = _plan(pruner, a, rate), _plan(pruner, b, rate)
        s_a = _sparsities(a, names, cuts_a, scoring, pruner, counts_only, scratch_a)
        s_b = _sparsities(b, names, cuts_b, scoring, pruner, counts_only, scratch_b)
        alpha = sparsity_weight
        ratios = {n: mixing_ratio(score_a, alpha * s_a[n], score_b, alpha * s_b[n]) for n in names}
        total = sum(a.numel(n) for n in prunable)
        k = round(rate * total)
        child_search = None
        if pruner.granularity == "global" and 0 < k < total:
            child_search = _ChildSearch(a, b, prunable, cuts_a, cuts_b, ratios, dtypes, k)
        with _writing(TensorFileWriter(dense_path, METADATA, layout)) as output:
            for name, dtype, _ in layout:
                view_a, view_b = a.view(name), b.view(name)
                pairs = zip(
                    _pruned_chunks(view_a, cuts_a.get(name), scratch_a),
                    _pruned_chunks(view_b, cuts_b.get(name), scratch_b),
                )
                releaser = _Releaser([a, b], name, view_a.numel())
                ratio = ratios[name]
                for (start, part_a), (_, part_b) in pairs:
                    n = part_a.numel()
                    merged = scratch.get("acc", torch.float32, n).copy_(part_a).mul_(ratio)
                    merged.add_(scratch.get("other", torch.float32, n).copy_(part_b).mul_(1.0 - ratio))
                    child = scratch.get("out", dtype, n).copy_(merged)
                    if child_search is not None and name in child_search.index:
                        child_search.count(name, child, scratch)
                    output.put((name, start), child)
                    releaser.advance(start + n)
    selection = child_search.finish() if child_search is not None else None
    try:
        sparsity = _prune_in_place(dense_path, rate, pruner, scoring, counts_only, selection)
        os.replace(dense_path, out_path)
    finally:
        dense_path.unlink(missing_ok=True)
    return StreamedChild(out_path, ratios, sparsity)


def _prune_in_place(
    path: Path, rate: float, pruner: MagnitudePruner, scoring, counts_only: bool, selection: Selection | None
) -> float:
    """Prune the prunable tensors of a safetensors file where they lie (the others are not
    touched), by `selection` when the merge pass already found the threshold; returns the
    pruned model's sparsity as `scoring.of_model` gives it."""
    scratch = Scratch()
    with TensorFile(path) as file:
        if selection is not None:
            names = [name for name in file.names() if pruner.prunable(name)]
            k = round(rate * sum(file.numel(n) for n in names))
            cuts = dict(zip(names, selection.cuts(k), strict=True))
        else:
            cuts = _plan(pruner, file, rate)
        fd = os.open(path, os.O_WRONLY)
        output = _Output(lambda offset, values: write_at(fd, offset, values))
        try:
            for name, cut in cuts.items():
                if cut is not None:
                    item = torch.empty((), dtype=file.dtype(name)).element_size()
                    releaser = _Releaser([file], name, file.numel(name))
                    for start, values in cut.chunks(file.view(name), scratch):
                        output.put(file.offset(name) + start * item, values)
                        releaser.advance(start + values.numel())
        finally:
            try:
                output.close()
            finally:
                os.close(fd)
        stats = {}
        for name, cut in cuts.items():  # the file holds the pruned values now
            view = file.view(name)
            stats[name] = (
                SparsityStats(view.numel(), cut.zeros)
                if counts_only and cut
                else _stats(view, None, counts_only, scratch)
            )
            file.release(name)
        return scoring.model_value(stats, pruner)
