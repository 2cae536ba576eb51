"""The on-disk home of individuals: one folder each, written atomically.

An individual's tensors are stored compactly when that is smaller: a pruned tensor as a packed
bitmask of its non-zeros plus the non-zero values (`utils.packed`), a dense one as is. Loading
gives back bit-identical tensors; an opened individual also hands out its packed tensors as
they lie (`LazyTensors.stored`), so a pass that counts or samples them unpacks nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from sae_merging.utils.files import atomic_directory, folder_digests
from sae_merging.utils.packed import PackedTensor, pack, packed_size, unpack
from sae_merging.utils.tensorfiles import LazyTensors, TensorFile, write_tensors

_MASK, _VALUES = "::mask", "::values"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"


def _layout(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The stored file's layout, from one counting pass (so the data is written at its place,
    not to a side file copied behind the header)."""
    layout = []
    for name, tensor in tensors.items():
        kept = packed_size(tensor)
        if kept is None:
            layout.append((name, tensor.dtype, tuple(tensor.shape)))
        else:
            layout.append((name + _MASK, torch.uint8, ((tensor.numel() + 7) // 8,)))
            layout.append((name + _VALUES, tensor.dtype, (kept,)))
    return layout


def _stored(
    tensors: Mapping[str, torch.Tensor], shapes: dict[str, list[int]], layout=None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) entries of the file, a tensor as is or as its mask and values (as
    `layout` has it when given: not counted twice); each tensor's shape is noted in `shapes` as
    it passes (a lazy mapping is read once)."""
    kept = None
    if layout is not None:
        kept = {entry[: -len(_VALUES)]: shape[0] for entry, _, shape in layout if entry.endswith(_VALUES)}
    for name, tensor in tensors.items():
        shapes[name] = list(tensor.shape)
        if kept is None:
            packed = pack(tensor)
        else:
            packed = pack(tensor, kept[name]) if name in kept else None
        if packed is None:
            yield name, tensor
        else:
            yield from zip((name + _MASK, name + _VALUES), packed, strict=True)


class IndividualStore:
    """Individuals by id under `root`; `save` is atomic, `load` returns name -> tensor."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.digests: dict[str, dict[str, str]] = {}  # ident -> file name -> checksum (checkpoint)

    def path(self, ident: str) -> Path:
        return self.root / ident

    def exists(self, ident: str) -> bool:
        return (self.path(ident) / META_FILE).is_file()

    def save(self, ident: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        """Write the tensors (compacted where smaller); the folder appears complete or not at
        all. A lazy mapping is read and written one tensor at a time, never held whole (and
        read once); tensors in memory are counted first and written at their place."""
        shapes: dict[str, list[int]] = {}
        with atomic_directory(self.path(ident)) as tmp:
            layout = None if isinstance(tensors, LazyTensors) else _layout(tensors)
            write_tensors(tmp / TENSORS_FILE, _stored(tensors, shapes, layout), layout=layout)
            (tmp / META_FILE).write_text(
                json.dumps({"shapes": shapes, "order": list(shapes), **(meta or {})})
            )
            digests = folder_digests(tmp)
        self.digests[ident] = digests

    def digest(self, ident: str) -> dict[str, str]:
        """The checksum of each file of an individual, as written (computed from disk if not known)."""
        if ident not in self.digests:
            self.digests[ident] = folder_digests(self.path(ident))
        return self.digests[ident]

    def meta(self, ident: str) -> dict:
        return json.loads((self.path(ident) / META_FILE).read_text())

    def load(self, ident: str) -> dict[str, torch.Tensor]:
        """Every tensor in memory (to build a model)."""
        return dict(self.open(ident).items())

    def open(self, ident: str) -> LazyTensors:
        """The tensors as a lazy mapping over the memory-mapped file: each is read (and
        unpacked) when it is accessed and not kept, so a pass over a model holds one tensor. A
        dense tensor is also readable as a view of the mapping (`LazyTensors.peek`, no copy)
        and a packed one as it lies (`LazyTensors.stored`); `release` drops their pages."""
        meta = self.meta(ident)
        shapes = meta["shapes"]
        source = TensorFile(self.path(ident) / TENSORS_FILE)  # unmapped once nothing refers to it
        packed_names = {name for name in meta["order"] if name + _MASK in source.entries}

        def packed(name: str) -> PackedTensor | None:
            if name not in packed_names:
                return None
            return PackedTensor(source.view(name + _MASK), source.view(name + _VALUES), shapes[name], source)

        def read(name: str) -> torch.Tensor:
            return unpack_copy(name) if name in packed_names else source.get(name)

        def unpack_copy(name: str) -> torch.Tensor:
            tensor = unpack(source.view(name + _MASK), source.view(name + _VALUES), shapes[name])
            release(name)
            return tensor

        def view(name: str) -> torch.Tensor:
            return unpack_copy(name) if name in packed_names else source.view(name)

        def release(name: str, start: int = 0, stop: int | None = None) -> None:
            if name not in packed_names:
                source.release(name, start, stop)
            elif start == 0 and stop is None:  # (a packed tensor's pages leave whole)
                source.release(name + _MASK)
                source.release(name + _VALUES)

        return LazyTensors(
            meta["order"], read, view, release, shapes=shapes, packed=packed if packed_names else None
        )

    def nbytes(self, ident: str) -> int:
        return sum(f.stat().st_size for f in self.path(ident).iterdir())

    def delete(self, ident: str) -> None:
        shutil.rmtree(self.path(ident), ignore_errors=True)
        self.digests.pop(ident, None)

    def idents(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / META_FILE).is_file())
