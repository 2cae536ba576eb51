"""Merging and pruning whole checkpoints from safetensors files, tensor by tensor, chunk by chunk
(`experiments/merge_checkpoints.py`). SAE's and M2N2's children are made by `merging.child`.

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

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner, Scratch, TensorCut, chunks
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
