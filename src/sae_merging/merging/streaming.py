"""Merging and pruning whole checkpoints from safetensors files, tensor by tensor, chunk by chunk
(`experiments/merge_checkpoints.py`). SAE's and M2N2's children are made by `merging.child`.

Inputs are memory-mapped (a `.safetensors` file, or a model folder, sharded or not) and merged
in blocks of 1M entries, taken in turn by worker threads: each block is converted into
cache-sized float32 buffers, combined with in-place ops, cast into the block's output buffer
and written at its place in the output file (its header is written first: no second copy of
the data; pwrite drops the GIL). Input pages leave the process soon after their block is done,
so resident memory stays at a few blocks whatever the model size. Allocation, page faults and
dtype conversion, not arithmetic, bound such merges; each is paid once per entry here
(mixed-dtype in-place ops are avoided too: on CPU they run several times slower than a
conversion into a buffer followed by a same-dtype op).

Results equal the in-memory references bit for bit: the float32 ops run in the order of
`functions.task_arithmetic` / `functions.linear` (no fused multiply-adds), and pruning uses the
pruner's exact plan (`pruning.magnitude`), ties broken in each file's own tensor order (the
order the model has when loaded in memory).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import (
    MagnitudePruner,
    RidingSearch,
    SamplePositions,
    Scratch,
    TensorCut,
)
from sae_merging.utils.tensorfiles import (
    ShardedTensorFile,
    TensorFile,
    TensorFileWriter,
    TensorSource,
    open_tensor_file,
)

Source = str | os.PathLike | TensorSource
METADATA = {"format": "pt"}
RELEASE_ENTRIES = 1 << 24  # entries between page releases of a mapped input
WRITE_DEPTH = 3  # output buffers in flight
SUB_CHUNK = 1 << 16  # entries per arithmetic step of a merge (float32 buffers stay in cache)


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


def _task_arithmetic_into(
    out: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    weights: Sequence[float],
    scale: float,
    buffers: Scratch,
) -> torch.Tensor:
    """out = inputs[0] + scale * sum_i w_i (inputs[i] - inputs[0]) for flat parts of equal size,
    in SUB_CHUNK steps: float32 buffers that stay in a core's cache, ops in the order (and
    rounding) of `functions.task_arithmetic`, the result cast straight into `out`."""
    f32, size = torch.float32, out.numel()
    for start in range(0, size, SUB_CHUNK):
        stop = min(start + SUB_CHUNK, size)
        n = stop - start
        base32 = buffers.get("base", f32, n).copy_(inputs[0][start:stop])
        total = buffers.get("acc", f32, n)
        for i, (weight, expert) in enumerate(zip(weights, inputs[1:], strict=True)):
            delta = total if i == 0 else buffers.get("delta", f32, n)
            delta.copy_(expert[start:stop]).sub_(base32)
            if weight != 1.0:  # 1.0 * x == x: skipping it changes no bit
                delta.mul_(weight)
            if i:
                total.add_(delta)
        if scale != 1.0:
            total.mul_(scale)
        out[start:stop].copy_(total.add_(base32))
    return out


@dataclass(frozen=True)
class _Block:
    """Flat entries [start, stop) of one tensor: the unit of work of a parallel pass."""

    name: str
    dtype: torch.dtype
    start: int
    stop: int


def _blocks(layout, names: set[str] | None = None) -> list[_Block]:
    """The layout cut into blocks of at most CHUNK entries, in file order."""
    blocks = []
    for name, dtype, shape in layout:
        if names is not None and name not in names:
            continue
        size = math.prod(shape)
        blocks += [
            _Block(name, dtype, s, min(s + magnitude.CHUNK, size)) for s in range(0, size, magnitude.CHUNK)
        ]
    return blocks


def _parallel(work: Callable[[Any, Scratch], None], items: Sequence[Any], threads: int) -> None:
    """work(item, scratch) for every item, by `threads` threads taking the next item in turn
    (each with its own buffers); torch ops run single-threaded inside, so a thread the machine
    deschedules delays its own item only, not every op of the others."""
    if threads <= 1 or len(items) <= 1:
        scratch = Scratch()
        for item in items:
            work(item, scratch)
        return
    queue, lock = iter(items), threading.Lock()

    def loop() -> None:
        scratch = Scratch()
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            work(item, scratch)

    with _single_threaded(), ThreadPoolExecutor(threads, thread_name_prefix="sae-merging") as pool:
        for future in [pool.submit(loop) for _ in range(threads)]:
            future.result()


@contextmanager
def _single_threaded() -> Iterator[None]:
    """torch ops on one thread inside (small or already parallel work: a parallel region of
    torch's waits for every thread, and on a busy machine for a descheduled one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _merge_search(files, prunable, weights, scale, dtypes, k: int) -> RidingSearch:
    """A global threshold search started before the merge pass, from the merged model's exact
    values at the sample positions (task arithmetic is elementwise: the sample is computed from
    the inputs at those positions alone); the merge pass counts the first request's keys."""
    positions = SamplePositions(sum(files[0].numel(n) for n in prunable))
    parts, scratch = [], Scratch()
    with _single_threaded():  # small gathers: on a busy machine 2 threads took 60x the CPU of 1
        for name in prunable:
            where = positions(files[0].numel(name))
            values = [sample_of_raw(file.view(name), where) for file in files]
            merged = _task_arithmetic_into(
                torch.empty(values[0].numel(), dtype=dtypes[name]), values, weights, scale, scratch
            )
            parts.append(merged.float().abs())
            for file in files:
                file.release(name)
    sizes = [files[0].numel(n) for n in prunable]
    return RidingSearch(torch.cat(parts), prunable, [dtypes[n] for n in prunable], sizes, k)


def sample_of_raw(view: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """A tensor's flat values at sample positions (None: all), in its own dtype."""
    flat = view.reshape(-1)
    return flat if where is None else flat[where]


def stream_task_arithmetic(
    base_file: Source,
    expert_files: Sequence[Source],
    scale: float,
    out_path: str | os.PathLike,
    weights: Sequence[float] | None = None,
    rate: float | None = None,
    pruner: MagnitudePruner | None = None,
    threads: int | None = None,
) -> Path:
    """theta_0 + scale * sum_i w_i (theta_i - theta_0), as `functions.task_arithmetic` per
    tensor, written to `out_path` (a safetensors file) in the base's dtypes; with `rate`, then
    pruned by `pruner` as `pruner.prune(merged, rate)` (before the file appears).

    `threads` threads (default: torch's setting) each merge one block of CHUNK entries at a
    time and write it at its place. Under global pruning the threshold search starts from the
    merged values at the sample positions and the merge pass counts its keys; the zeros are
    then written in place into the mapped, still unpublished file."""
    weights = list(weights) if weights is not None else [1.0] * len(expert_files)
    if len(weights) != len(expert_files):
        raise ValueError(f"{len(weights)} weights for {len(expert_files)} experts")
    threads = threads or torch.get_num_threads()
    pruner = pruner if rate is not None else None
    with _opened([base_file, *expert_files]) as files:
        layout = _layout(files[0], files[1:])
        dtypes = {name: dtype for name, dtype, _ in layout}
        prunable = [name for name, _, _ in layout if pruner is not None and pruner.prunable(name)]
        total = sum(files[0].numel(n) for n in prunable)
        k = round(rate * total) if pruner is not None else 0
        counts = None
        if pruner is not None and pruner.granularity == "global" and 0 < k < total:
            counts = _merge_search(files, prunable, weights, scale, dtypes, k)
        writer = TensorFileWriter(out_path, METADATA, layout)
        try:

            def merge(block: _Block, scratch: Scratch) -> None:
                inputs = [file.view(block.name).reshape(-1)[block.start : block.stop] for file in files]
                out = scratch.get("out", block.dtype, block.stop - block.start)
                _task_arithmetic_into(out, inputs, weights, scale, scratch)
                if counts is not None and block.name in counts.index:
                    counts.count(block.name, out, scratch)
                writer.write_part(block.name, block.start, out)
                for file in files:
                    file.release(block.name, block.start, block.stop)

            _parallel(merge, _blocks(layout), threads)
            if pruner is not None and k > 0:
                threshold = counts.finish() if counts is not None else None
                cuts = dict(zip(prunable, threshold.cuts(k), strict=True)) if threshold else None
                _prune_written(writer, pruner, rate, cuts, threads)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return Path(out_path)


def _prune_written(
    writer: TensorFileWriter,
    pruner: MagnitudePruner,
    rate: float,
    cuts: dict[str, TensorCut | None] | None,
    threads: int,
) -> None:
    """Prune the prunable tensors of a file being written, where they lie (read from the page
    cache, written back in place: through a shared writable mapping instead, the page faults
    cost 3x the CPU): by `cuts` when the merge pass settled them, else by the pruner's plan
    over the file."""
    with TensorFile(writer.partial) as file:
        if cuts is None:
            cuts = _plan(pruner, file, rate)

        def zero(name: str, scratch: Scratch) -> None:
            releaser = _Releaser([file], name, file.numel(name))
            for start, values in cuts[name].chunks(file.view(name), scratch):
                writer.overwrite_part(name, start, values)
                releaser.advance(start + values.numel())

        _parallel(zero, [name for name, cut in cuts.items() if cut is not None], threads)


def _plan(pruner: MagnitudePruner, file: TensorSource, rate: float) -> dict[str, TensorCut | None]:
    """The pruner's plan for a file's prunable tensors, taken in the file's order (the order
    that breaks ties, as for the model loaded in memory)."""
    names = [name for name in file.names() if pruner.prunable(name)]
    plan = pruner.plan(lambda: _views(file, names), rate, [file.numel(n) for n in names])
    return dict(zip(names, plan.cuts, strict=True))
