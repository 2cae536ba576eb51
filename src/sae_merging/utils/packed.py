"""A pruned tensor stored compactly: a packed bitmask of its non-zero bit patterns plus those
values in order (at 60% sparsity in bf16 that is 46% of the dense bytes); the archive's form of
a pruned individual (`runtime.store`).

`PackedTensor` reads that form where it lies (mapped views of the file) without unpacking the
whole tensor: its zero count is the mask's complement, a magnitude count runs over the values
alone, a sample reads only the sampled entries (ranks from the mask's byte popcounts), and a pass
unpacks it chunk by chunk into one reused buffer. A -0.0 is a non-zero bit pattern, kept as a
value, so every read is bit-exact. 16-bit tensors are packed and unpacked by compiled loops
where they could be built (`utils.kernels`: the same bits as the NumPy code here).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sae_merging.utils import kernels

PACK_PART = 1 << 18  # entries per step of `pack` (a multiple of 8: the mask's bytes split evenly)


def bits(flat: torch.Tensor) -> torch.Tensor:
    """The entries' bit patterns as integers of the same width (bool as is)."""
    if flat.dtype == torch.bool:
        return flat
    width = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    return flat.view(width)


def packed_size(tensor: torch.Tensor) -> int | None:
    """How many values the compact form of a tensor holds, None when the dense form is not
    larger (non-zero bit patterns: a -0.0 is kept as a value, so loading is bit-exact)."""
    flat = tensor.detach().reshape(-1).cpu()
    kept = int(np.count_nonzero(bits(flat).numpy()))
    compact_bytes = (flat.numel() + 7) // 8 + kept * flat.element_size()
    return kept if compact_bytes < flat.numel() * flat.element_size() else None


def pack(tensor: torch.Tensor, kept: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(bitmask, values) of a tensor, or None when the dense form is not larger (`kept`: its
    `packed_size`, when known). NumPy on the bit patterns, in cache-sized parts: `compress` of
    a part into its place in the values (5x faster than one boolean-mask index of the whole
    tensor, which mispredicts at every zero)."""
    kept = packed_size(tensor) if kept is None else kept
    if kept is None:
        return None
    flat = tensor.detach().reshape(-1).cpu()
    patterns = bits(flat).numpy()
    values = np.empty(kept, dtype=patterns.dtype)
    mask = np.empty((patterns.size + 7) // 8, dtype=np.uint8)
    if patterns.itemsize == 2 and kernels.pack16(patterns, mask, values) is not None:
        return torch.from_numpy(mask), torch.from_numpy(values).view(flat.dtype)
    nonzero = np.empty(min(PACK_PART, patterns.size), dtype=bool)
    done = 0
    for start in range(0, patterns.size, PACK_PART):
        part = patterns[start : start + PACK_PART]
        where = np.not_equal(part, 0, out=nonzero[: part.size])
        count = int(np.count_nonzero(where))
        np.compress(where, part, out=values[done : done + count])
        mask[start // 8 : (start + part.size + 7) // 8] = np.packbits(where)
        done += count
    return torch.from_numpy(mask), torch.from_numpy(values).view(flat.dtype)


def _set_bits_before_bytes(mask: np.ndarray, byte: np.ndarray) -> np.ndarray:
    """How many bits of `mask` (uint8) are set before each byte index in `byte`: a running
    popcount over the mask's whole 8-byte words, plus each index's word's lower bytes."""
    whole = mask.size // 8
    words = mask[: whole * 8].view("<u8")
    tail = np.zeros(8, dtype=np.uint8)
    tail[: mask.size - whole * 8] = mask[whole * 8 :]
    words = np.concatenate((words, tail.view("<u8"))) if mask.size > whole * 8 else words
    before = np.zeros(words.size + 1, dtype=np.int64)
    np.cumsum(np.bitwise_count(words), out=before[1:])
    index, lower = byte >> 3, (byte & 7) * 8  # byte j of a little-endian word: bits 8j to 8j+7
    below = (np.uint64(1) << lower.astype(np.uint64)) - np.uint64(1)
    return before[index] + np.bitwise_count(words[np.minimum(index, words.size - 1)] & below).astype(np.int64)


class PackedTensor:
    """A tensor in its packed form (`pack`), read where it lies (see the module docstring).
    `source` is whatever keeps the mapped views valid (the open file)."""

    def __init__(self, mask: torch.Tensor, values: torch.Tensor, shape, source: object = None) -> None:
        self.mask, self.values, self.shape = mask, values, torch.Size(shape)
        self.dtype = values.dtype
        if mask.numel() < (self.numel() + 7) // 8:
            raise ValueError(
                f"packed tensor of shape {tuple(self.shape)}: its mask has {mask.numel()} bytes, "
                f"it needs {(self.numel() + 7) // 8}"
            )
        self._source = source

    def numel(self) -> int:
        return self.shape.numel()

    @property
    def zeros(self) -> int:
        """Entries whose bit pattern is zero (+0.0; a -0.0 is a value)."""
        return self.numel() - self.values.numel()

    def negative_zeros(self) -> int:
        """How many values are -0.0 (the sign bit alone), counted chunk by chunk."""
        values = bits(self.values).numpy()
        sign = np.array(1, dtype=values.dtype) << (8 * values.itemsize - 1)  # (wraps to the minimum)
        found = np.empty(min(PACK_PART, values.size), dtype=bool)
        count = 0
        for start in range(0, values.size, PACK_PART):
            part = values[start : start + PACK_PART]
            count += int(np.count_nonzero(np.equal(part, sign, out=found[: part.size])))
        return count

    def at(self, positions: torch.Tensor | None) -> torch.Tensor:
        """The entries at sorted flat `positions` (None: all, unpacked), reading the mask's
        byte popcounts and the sampled entries' values only."""
        if positions is None:
            return self.dense().reshape(-1)
        where = positions.numpy()
        mask = self.mask.numpy()
        byte, shift = where >> 3, 7 - (where & 7)  # bit order: the first entry is the MSB
        word = mask[byte].astype(np.int64)
        kept = (word >> shift) & 1
        # set bits before the entry: those of the 8-byte words before its word (a running
        # count over words, not bytes: 8x fewer steps), of its word's bytes before its own,
        # and of its own byte before it
        rank = _set_bits_before_bytes(mask, byte) + np.bitwise_count(word >> (shift + 1)).astype(np.int64)
        out = np.zeros(where.size, dtype=bits(self.values).numpy().dtype)
        chosen = kept.astype(bool)
        out[chosen] = bits(self.values).numpy()[rank[chosen]]
        return torch.from_numpy(out).view(self.dtype)

    def chunks(self, size: int, out: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, flat chunk) pairs covering the tensor unpacked, `size` entries each: into
        the flat `out`, or else each into the same buffer (a chunk is valid until the next)."""
        n = self.numel()
        mask, values = self.mask.numpy(), bits(self.values).numpy()
        if out is None:
            target = np.empty(min(size, n), dtype=values.dtype)
        else:
            target = bits(out).numpy()
        done = 0
        compiled = values.itemsize == 2
        for start in range(0, n, size):
            stop = min(start + size, n)
            part = target[: stop - start] if out is None else target[start:stop]
            used = kernels.unpack16(mask, values[done:], start, part) if compiled else None
            if used is not None:
                done += used
                yield start, torch.from_numpy(part).view(self.dtype)
                continue
            first = start % 8  # (a chunk may start inside a byte)
            kept = np.unpackbits(mask[start // 8 : (stop + 7) // 8], count=stop - start + first)
            where = np.nonzero(kept[first:].view(bool))[0]  # (on bools: 5x `flatnonzero` of bytes)
            part.fill(0)
            part[where] = values[done : done + where.size]
            done += where.size
            yield start, torch.from_numpy(part).view(self.dtype)

    def dense(self) -> torch.Tensor:
        """The whole tensor, unpacked (an owned copy)."""
        flat = torch.empty(self.numel(), dtype=self.dtype)
        for _ in self.chunks(PACK_PART, flat):
            pass
        return flat.reshape(self.shape)


def unpack(mask: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """The dense tensor of a packed one (an owned copy)."""
    return PackedTensor(mask, values, shape).dense()


def entries(tensor: torch.Tensor | PackedTensor, positions: torch.Tensor | None) -> torch.Tensor:
    """A tensor's (or a packed one's) entries at sorted flat `positions` (None: all), flat and
    owned."""
    if isinstance(tensor, PackedTensor):
        return tensor.at(positions)
    flat = tensor.detach().reshape(-1)
    return (flat if positions is None else flat[positions]).clone()


def dense(tensor: torch.Tensor | PackedTensor) -> torch.Tensor:
    """A tensor as is, a packed one unpacked."""
    return tensor.dense() if isinstance(tensor, PackedTensor) else tensor
