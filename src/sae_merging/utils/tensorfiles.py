"""The one tensor I/O module: reading and writing safetensors files and sharded folders.

Every reader and writer of tensor files in the package goes through here: model folders
(`models.io`), the archive of individuals (`runtime.store`), the streaming merges
(`merging.streaming`) and the experiments. Reads are memory-mapped, writes are streaming and
atomic. A model is merged larger than RAM one tensor at a time.

`TensorFile` maps a file once and hands out zero-copy tensor views of it; `release(name)` tells
the kernel the process no longer needs those pages (they stay in the page cache, but leave the
process's resident memory), so a pass over a whole model keeps only a tensor or two resident.
`ShardedTensorFile` does the same for a sharded checkpoint folder (`model.safetensors.index.json`)
and `open_tensor_file` opens either.
`TensorFileWriter` writes tensors as they are produced, so the full model is never held in
memory. Given the layout (names, dtypes, shapes) up front it writes the header first and each
tensor straight to its place, in parts if wanted (`write_part`), with no second copy of the data;
without one, data goes to a side file and `close()` prepends the header. Either way the file is
written under a temporary name and renamed on `close()`, so it appears complete or not at all.
`LazyTensors` is a read-only name -> tensor mapping whose values are computed on access, so a
merge written as dictionary code (`{n: f(a[n], b[n]) for n in names}`) streams when its inputs
are lazy and its consumer iterates.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from sae_merging.utils.packed import PackedTensor

DTYPE_CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_PAGE = mmap.PAGESIZE
_PARTIAL = ".partial"

# (name, dtype, shape) of each tensor of a file, in file order
Layout = Sequence[tuple[str, torch.dtype, Sequence[int]]]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class TensorFile:
    """Zero-copy views of the tensors of one safetensors file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
            self.metadata = header.pop("__metadata__", {}) or {}
            size = os.fstat(handle.fileno()).st_size
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.data_start = 8 + header_size
        self.entries = {
            name: (DTYPE_CODES[info["dtype"]], tuple(info["shape"]), *info["data_offsets"])
            for name, info in header.items()
        }

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def nbytes(self, name: str | None = None) -> int:
        """Bytes of one tensor's data, or of all tensors."""
        if name is None:
            return sum(self.nbytes(n) for n in self.entries)
        _, _, start, end = self.entries[name]
        return end - start

    def offset(self, name: str) -> int:
        """Where the tensor's data starts in the file."""
        return self.data_start + self.entries[name][2]

    def layout(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(name, dtype, shape) for name, (dtype, shape, _, _) in self.entries.items()]

    def get(self, name: str) -> torch.Tensor:
        """The tensor as an owned copy (safe to keep or change), its pages then released."""
        tensor = self.view(name).clone()
        self.release(name)
        return tensor

    def view(self, name: str) -> torch.Tensor:
        """The tensor as a read-only view of the mapped file (no copy); never write to it."""
        dtype, shape, start, end = self.entries[name]
        count = (end - start) // _itemsize(dtype)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():  # the mapping is read-only; views are never written to
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=self.data_start + start)
        return flat.view(shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of `name` (or of its flat elements [start, stop)) from this process's
        resident memory; a later read maps them again from the page cache."""
        dtype, _, begin, end = self.entries[name]
        item = _itemsize(dtype)
        first = self.data_start + begin + start * item
        last = self.data_start + (end if stop is None else begin + stop * item)
        first = first // _PAGE * _PAGE
        if self._map is not None and last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()


class ShardedTensorFile:
    """The tensors of a sharded checkpoint folder (an index plus several safetensors files),
    with TensorFile's interface."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder)
        weight_map = json.loads((self.path / SAFETENSORS_INDEX).read_text())["weight_map"]
        self._files = {file: TensorFile(self.path / file) for file in dict.fromkeys(weight_map.values())}
        # the index's order, as models.io.Checkpoint lists them
        self._owner = {name: self._files[file] for name, file in weight_map.items()}
        self.metadata: dict = {}

    def __enter__(self) -> ShardedTensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        return list(self._owner)

    def shard(self, name: str) -> TensorFile:
        return self._owner[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._owner[name].dtype(name)

    def numel(self, name: str) -> int:
        return self._owner[name].numel(name)

    def nbytes(self, name: str | None = None) -> int:
        if name is None:
            return sum(self.nbytes(n) for n in self._owner)
        return self._owner[name].nbytes(name)

    def layout(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(name, self.dtype(name), self.shape(name)) for name in self._owner]

    def view(self, name: str) -> torch.Tensor:
        return self._owner[name].view(name)

    def get(self, name: str) -> torch.Tensor:
        return self._owner[name].get(name)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        self._owner[name].release(name, start, stop)

    def close(self) -> None:
        for shard in self._files.values():
            shard.close()


# What a streaming pass reads from: one file or a sharded folder, with the same interface.
TensorSource = TensorFile | ShardedTensorFile


def has_tensor_files(folder: str | os.PathLike) -> bool:
    """Whether a model folder holds safetensors weights (one file or a sharded index)."""
    folder = Path(folder)
    return (folder / SAFETENSORS_INDEX).is_file() or (folder / SAFETENSORS_FILE).is_file()


def open_tensor_file(path: str | os.PathLike) -> TensorSource:
    """A safetensors file, or a model folder holding `model.safetensors` or a sharded index."""
    path = Path(path)
    if path.is_dir():
        if (path / SAFETENSORS_INDEX).is_file():
            return ShardedTensorFile(path)
        return TensorFile(path / SAFETENSORS_FILE)
    return TensorFile(path)


def _header_blob(layout: Layout, metadata: Mapping[str, str]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The serialized header (8-byte aligned) and each tensor's data range."""
    header: dict[str, dict] = {}
    ranges: dict[str, tuple[int, int]] = {}
    offset = 0
    for name, dtype, shape in layout:
        if name in header:
            raise ValueError(f"tensor {name!r} listed twice")
        size = math.prod(shape) * _itemsize(dtype)
        header[name] = {
            "dtype": CODE_OF[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        ranges[name] = (offset, offset + size)
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob, ranges


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.numel() == 0:
        return memoryview(b"")
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


class TensorFileWriter:
    """Write a safetensors file tensor by tensor (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: Mapping[str, str] | None = None,
        layout: Layout | None = None,
    ) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self._partial = self.path.with_name(self.path.name + _PARTIAL)
        self._fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._header: dict[str, dict] = {}
        self._offset = 0
        self._ranges: dict[str, tuple[int, int]] | None = None
        self._lock = threading.Lock()
        if layout is not None:
            blob, self._ranges = _header_blob(layout, self.metadata)
            self._data_start = len(blob)
            self._written = dict.fromkeys(self._ranges, 0)
            _pwrite_all(self._fd, memoryview(blob), 0)
            os.ftruncate(
                self._fd, self._data_start + sum(end - start for start, end in self._ranges.values())
            )

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor (in any order when the layout was given)."""
        if self._ranges is not None:
            start, end = self._ranges[name]
            if tensor.numel() * tensor.element_size() != end - start:
                raise ValueError(f"tensor {name!r}: {tuple(tensor.shape)} does not match the layout")
            self.write_part(name, 0, tensor)
            return
        if name in self._header:
            raise ValueError(f"tensor {name!r} written twice")
        raw = _raw_bytes(tensor)
        _pwrite_all(self._fd, raw, self._offset)
        self._header[name] = {
            "dtype": CODE_OF[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self._offset, self._offset + len(raw)],
        }
        self._offset += len(raw)

    def write_part(self, name: str, start: int, values: torch.Tensor) -> None:
        """Write flat elements [start, start + values.numel()) of `name` (layout mode only)."""
        written = self._place(name, start, values)
        with self._lock:  # parts may come from several threads
            self._written[name] += written

    def overwrite_part(self, name: str, start: int, values: torch.Tensor) -> None:
        """Write over elements already written (layout mode; e.g. to prune them in place
        before the file is published)."""
        self._place(name, start, values)

    def _place(self, name: str, start: int, values: torch.Tensor) -> int:
        """Write the values at their place in the file; returns the bytes written."""
        if self._ranges is None:
            raise ValueError("write_part needs the layout given to the writer")
        begin, end = self._ranges[name]
        raw = _raw_bytes(values)
        offset = begin + start * values.element_size()
        if start < 0 or offset + len(raw) > end:
            raise ValueError(f"tensor {name!r}: elements from {start} overrun the tensor")
        _pwrite_all(self._fd, raw, self._data_start + offset)
        return len(raw)

    @property
    def partial(self) -> Path:
        """The file being written (complete header, data as written so far)."""
        return self._partial

    def close(self) -> Path:
        """Finish the file and move it to its final name."""
        try:
            if self._ranges is not None:
                short = [n for n, (s, e) in self._ranges.items() if self._written[n] != e - s]
                if short:
                    raise ValueError(f"tensors not fully written: {short[:3]}")
            else:
                self._prepend_header()
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        os.replace(self._partial, self.path)
        return self.path

    def _prepend_header(self) -> None:
        """Header-less mode: the data so far sits at the start of the side file; copy it behind
        the header in a second file that takes its place."""
        header = dict(self._header)
        if self.metadata:
            header["__metadata__"] = self.metadata
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        data_path = self._partial.with_name(self._partial.name + ".data")
        os.replace(self._partial, data_path)
        try:
            with open(self._partial, "wb") as out, open(data_path, "rb") as data:
                out.write(struct.pack("<Q", len(blob)))
                out.write(blob)
                shutil.copyfileobj(data, out, length=16 * 2**20)
        finally:
            data_path.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._partial.unlink(missing_ok=True)


def write_tensors(
    path: str | os.PathLike,
    items: Iterable[tuple[str, torch.Tensor]],
    metadata=None,
    layout: Layout | None = None,
) -> None:
    """Stream (name, tensor) pairs into one safetensors file (of `layout`, when known: then
    written at their place, with no side file)."""
    writer = TensorFileWriter(path, metadata, layout)
    try:
        for name, tensor in items:
            writer.write(name, tensor)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def lazy_tensors(path: str | os.PathLike) -> LazyTensors:
    """A file's (or sharded folder's) tensors in file order, each read (as an owned copy) when
    accessed; the mapping keeps the file open."""
    source = open_tensor_file(path)
    return LazyTensors(source.names(), source.get, source.view, source.release)


class LazyTensors(Mapping[str, torch.Tensor]):
    """name -> tensor, computed by `load(name)` each time it is read (nothing is kept).

    A mapping over a file also takes `view` (the tensor as a read-only view of the mapped file,
    no copy) and `release` (its pages leave the process): `peek` then reads without copying, so
    a pass that only reads (a count, a merge into another tensor) costs no copy of the model."""

    def __init__(
        self,
        names: Iterable[str],
        load: Callable[[str], torch.Tensor],
        view: Callable[[str], torch.Tensor] | None = None,
        release: Callable[..., None] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        packed: Callable[[str], PackedTensor | None] | None = None,
    ) -> None:
        self._names = list(names)
        self._known = set(self._names)
        self._load = load
        self._view = view
        self._release = release
        self._shapes = shapes  # known without reading (an archive member's meta), or None
        self._packed = packed  # a tensor's packed form where it is stored packed, else None

    @property
    def mapped(self) -> bool:
        """Whether reads are zero-copy views of a mapped file (a pass costs no copy)."""
        return self._view is not None

    def peek(self, name: str) -> torch.Tensor:
        """The tensor to read, never to write: a mapped view when there is one (call
        `release(name)` once done with it), else `self[name]`."""
        if self._view is None:
            return self[name]
        if name not in self._known:
            raise KeyError(name)
        return self._view(name)

    @property
    def packs(self) -> bool:
        """Whether some tensors are stored packed and read as such (`stored`): a pass that
        counts or samples them unpacks nothing, and a merge pass unpacks them chunk by chunk."""
        return self._packed is not None

    def stored(self, name: str) -> torch.Tensor | PackedTensor:
        """The tensor to read, as it is stored: its `PackedTensor` where the mapping holds it
        packed (an archive member's pruned tensor: nothing unpacked), else `peek(name)`."""
        packed = self._packed(name) if self._packed is not None and name in self._known else None
        return self.peek(name) if packed is None else packed

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """The pages `peek(name)` mapped (of its flat entries [start, stop), or all) leave the
        process (a no-op without a mapped file)."""
        if self._release is not None:
            self._release(name, start, stop)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def map(self, transform: Callable[[str, torch.Tensor], torch.Tensor]) -> LazyTensors:
        """A lazy view with `transform(name, tensor)` applied on access."""
        return LazyTensors(self._names, lambda name: transform(name, self._load(name)))


def numel(tensors: Mapping[str, torch.Tensor], name: str) -> int:
    """A tensor's entry count, read from its shape where the mapping knows it (an archive
    member's tensors are not unpacked for it), else from the tensor."""
    if isinstance(tensors, LazyTensors) and tensors._shapes is not None and name in tensors._shapes:
        return math.prod(tensors._shapes[name])
    size = peek(tensors, name).numel()
    release(tensors, name)
    return size


def peek(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """A tensor of any model mapping, to read only (`LazyTensors.peek`: no copy where mapped)."""
    return tensors.peek(name) if isinstance(tensors, LazyTensors) else tensors[name]


def stored(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor | PackedTensor:
    """A tensor of any model mapping, to read only, as it is stored (`LazyTensors.stored`)."""
    return tensors.stored(name) if isinstance(tensors, LazyTensors) else tensors[name]


def release(tensors: Mapping[str, torch.Tensor], name: str, start: int = 0, stop: int | None = None) -> None:
    """Done reading `peek(tensors, name)` (its flat entries [start, stop), or all): its mapped
    pages leave the process."""
    if isinstance(tensors, LazyTensors):
        tensors.release(name, start, stop)
