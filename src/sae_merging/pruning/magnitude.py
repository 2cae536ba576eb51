"""Magnitude pruning (`pruner=magnitude`): zero the smallest |w|.

Rate `s` zeroes exactly `round(s * n)` entries: per tensor (`granularity: local`) or over all
prunable tensors at once (`granularity: global`, one threshold). Ties at the threshold are
broken by position (tensor order, then flat index), so the result equals a stable sort of all
magnitudes. Nothing is sorted or concatenated to find it:

1. Magnitudes are compared as integer keys, the bits of |w| with the sign bit cleared, whose
   integer order is the order of |w|. bf16 / fp16 weights keep their own 16-bit keys (32,768
   values); other or mixed dtypes compare as float32, like the sort-based reference.
2. A stratified sample of about 1M magnitudes (blocks of 256 entries) brackets the k-th
   smallest key, its width set by the rank error measured across blocks.
3. One counting pass over all weights counts, per tensor, the keys below each key of the
   bracket (a bf16 bracket is a handful of keys), or below its two ends while collecting the
   few keys inside it (float32); the exact k-th key T and the per-tensor counts follow. A
   bracket the sample missed is narrowed by further passes, so the result never depends on it.
4. The plan zeroes, in each tensor, the keys below T and a quota of the keys equal to T (the
   quotas are handed out in tensor order), so tensors can be pruned in any order, each alone.

Every pass walks 1M-entry chunks through preallocated buffers: counting by one NumPy
comparison into a preallocated bool buffer and `count_nonzero` per key (2.4x faster than
summing sign bits with torch ops, 1.3x faster than a `bincount`, measured on 1M bf16 keys),
zeroing by one `hardshrink` (|w| <= the magnitude of the key below the cut becomes 0: one op,
exact, where masks take four). Memory stays at a few chunks, so a model larger than RAM prunes
from memory-mapped files.

Tensors named by the `skip` patterns (embeddings, norms, biases, LM head by default) are never
pruned and do not count in `n`.

What is pruned (`target`): the weights themselves (`weights`), or the task vector theta - theta_base
(`task_vector`): the smallest |theta - theta_base| are reset to the base's weights, every other
entry keeps its own weight, so a pruned entry equals the base's and a kept one is untouched (the
paper does not say which; pruning the deltas is what TIES and DARE do).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sae_merging.pruning.settings import MagnitudePrunerSettings
from sae_merging.utils import kernels
from sae_merging.utils.packed import PackedTensor, entries
from sae_merging.utils.tensorfiles import LazyTensors, numel, peek, release, stored

CHUNK = 1 << 20  # entries per step of every pass (buffers of a few MB: cache-sized, few calls)
SAMPLE = 1 << 20  # magnitudes sampled to bracket the threshold (all of them in smaller models)
SAMPLE_BLOCK = 256  # contiguous entries per sampled block (few pages of a mapped file to touch)
SPREAD = 3.0  # bracket half-width, in standard errors of the sampled rank
MAX_KEYS = 8  # a bracket this narrow (in keys) is counted key by key
MAX_CANDIDATES = 1 << 22  # a bracket holding at most this many entries is collected and sorted

_CPU = torch.device("cpu")
# one pass over the tensors to prune, callable again for every further pass
TensorPasses = Callable[[], Iterable[torch.Tensor]]


@dataclass(frozen=True)
class KeySpace:
    """Magnitudes as integer keys: the bits of |w| as `dtype`, with the sign bit cleared."""

    dtype: torch.dtype

    @classmethod
    def of(cls, dtypes: Iterable[torch.dtype]) -> KeySpace:
        """The tensors' own dtype when they share a 16-bit float one, float32 otherwise."""
        found = set(dtypes)
        if len(found) == 1 and found <= {torch.bfloat16, torch.float16}:
            return cls(found.pop())
        return cls(torch.float32)

    @property
    def bits(self) -> int:
        return torch.finfo(self.dtype).bits

    @property
    def int_dtype(self) -> torch.dtype:
        return torch.int16 if self.bits == 16 else torch.int32

    @property
    def limit(self) -> int:
        """One past the largest key."""
        return 1 << (self.bits - 1)

    def value(self, key: int) -> float:
        return float(torch.tensor([key], dtype=self.int_dtype).view(self.dtype)[0])

    def keys_of(self, magnitudes: torch.Tensor) -> torch.Tensor:
        """int32 keys of a small float tensor (a sample)."""
        return magnitudes.to(self.dtype).view(self.int_dtype).to(torch.int32) & (self.limit - 1)

    def sorted_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Keys sorted: by counting for 16-bit keys (32,768 bins), by a sort otherwise."""
        if self.bits == 16:
            counts = torch.bincount(keys, minlength=self.limit)
            return torch.repeat_interleave(torch.arange(self.limit, dtype=torch.int32), counts)
        return keys.sort().values


class Scratch:
    """Chunk-sized buffers, allocated once and reused across chunks and tensors (one set per
    device: the kernels run where their chunk lies)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, slot: str, dtype: torch.dtype, n: int, device: torch.device = _CPU) -> torch.Tensor:
        """The first `n` entries of the slot's buffer on `device` (grown to the largest `n`
        asked, at most a chunk as passes ask, so small tensors get small buffers)."""
        key = (slot, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < n:
            buffer = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buffer[:n]


def chunks(
    tensor: torch.Tensor | PackedTensor, device: torch.device | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, flat slice) pairs covering the tensor, CHUNK entries each (copied to `device`
    when given and elsewhere; else views; a packed tensor unpacked chunk by chunk into one
    buffer, each chunk valid until the next)."""
    if isinstance(tensor, PackedTensor):
        parts = tensor.chunks(CHUNK)
    else:
        flat = tensor.detach().reshape(-1)
        parts = ((start, flat[start : start + CHUNK]) for start in range(0, flat.numel(), CHUNK))
    for start, part in parts:
        yield start, part if device is None else part.to(device)


def _keys(chunk: torch.Tensor, space: KeySpace, scratch: Scratch) -> torch.Tensor:
    n = chunk.numel()
    if chunk.dtype != space.dtype:
        chunk = scratch.get("convert", space.dtype, n, chunk.device).copy_(chunk)
    keys = scratch.get("keys", space.int_dtype, n, chunk.device)
    return torch.bitwise_and(chunk.view(space.int_dtype), space.limit - 1, out=keys)


def _count_below(keys: torch.Tensor, key: int, space: KeySpace, scratch: Scratch) -> int:
    """How many of `keys` are below `key` (on the CPU by NumPy: one comparison into a reused
    bool buffer, then count_nonzero; torch has no fused compare-and-count on CPU)."""
    n = keys.numel()
    if key <= 0:
        return 0
    if key >= space.limit:
        return n
    if keys.device.type != "cpu":
        return int(torch.count_nonzero(keys < key))
    below = scratch.get("below", torch.bool, n).numpy()
    return int(np.count_nonzero(np.less(keys.numpy(), key, out=below)))


def count_zeros(tensor: torch.Tensor, scratch: Scratch | None = None) -> int:
    """Exact zeros of a float tensor (as float32, like SparsityStats.of), by the counting kernel."""
    space, scratch = KeySpace.of([tensor.dtype]), scratch or Scratch()
    return sum(_count_below(_keys(part, space, scratch), 1, space, scratch) for _, part in chunks(tensor))


def _mask_into(chunk: torch.Tensor, cut: int, space: KeySpace, scratch: Scratch, out: torch.Tensor) -> None:
    """out = chunk with every entry whose key is below `cut` zeroed (`out` may be `chunk`)."""
    if cut <= 0:
        if out.data_ptr() != chunk.data_ptr():
            out.copy_(chunk)
        return
    if cut >= space.limit:
        out.zero_()
        return
    below = space.value(cut - 1)  # the largest magnitude to zero
    if chunk.dtype == space.dtype and not math.isnan(below):  # exact: `below` is a value of the dtype
        torch.ops.aten.hardshrink.out(chunk, below, out=out)
        return
    keys = _keys(chunk, space, scratch)
    pruned = torch.sub(keys, cut, out=scratch.get("work", space.int_dtype, keys.numel(), keys.device))
    pruned.bitwise_right_shift_(space.bits - 1)  # -1 (all bits) where pruned, 0 where kept
    if chunk.dtype == space.dtype:
        torch.bitwise_and(chunk.view(space.int_dtype), pruned.bitwise_not_(), out=out.view(space.int_dtype))
    else:
        if out.data_ptr() != chunk.data_ptr():
            out.copy_(chunk)
        out.masked_fill_(pruned.bool(), 0)


@dataclass(frozen=True)
class TensorCut:
    """How one tensor is pruned: its keys below `threshold` are zeroed, and the first `quota`
    (in flat order) of its `ties` keys equal to it; `zeros` is the pruned tensor's zero count."""

    space: KeySpace
    threshold: int
    ties: int = 0
    quota: int = 0
    zeros: int = 0

    def chunks(
        self,
        tensor: torch.Tensor,
        scratch: Scratch,
        out: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, pruned chunk) pairs, written into the flat `out` or else into a scratch
        buffer that the next chunk overwrites; each chunk moved to `device` first (when given).
        A packed tensor the cut leaves as it is (`leaves`) is yielded as unpacked."""
        if out is None and isinstance(tensor, PackedTensor) and self.leaves(tensor):
            yield from chunks(tensor, device)
            return
        remaining = self.quota
        for start, chunk in chunks(tensor, device):
            n = chunk.numel()
            if out is None:
                target = scratch.get("pruned", chunk.dtype, n, chunk.device)
            else:
                target = out[start : start + n]
            if self.threshold >= self.space.limit:
                target.zero_()
                yield start, target
                continue
            cut, first = self.threshold, None
            if remaining == self.ties and remaining:  # every tie of the tensor goes
                cut = self.threshold + 1
            elif remaining:
                keys = _keys(chunk, self.space, scratch)
                here = _count_below(keys, self.threshold + 1, self.space, scratch) - _count_below(
                    keys, self.threshold, self.space, scratch
                )
                if here <= remaining:
                    cut, remaining = self.threshold + 1, remaining - here
                else:  # the first `remaining` ties of this chunk go (found before `target` changes)
                    first, remaining = (keys == self.threshold).nonzero().reshape(-1)[:remaining], 0
            _mask_into(chunk, cut, self.space, scratch, target)
            if first is not None:
                target[first] = 0
            yield start, target

    def leaves(self, tensor: PackedTensor) -> bool:
        """Whether the cut changes no bit of a packed tensor: it zeros no key above 0, and the
        key-0 entries it may zero are all +0.0 already (its ties, every key-0 entry, are the
        tensor's zero bit patterns: no -0.0 among them). So an archive member pruned to the
        rate, whose cut is its own zeros, is not zeroed again."""
        return self.threshold == 0 and (self.quota == 0 or self.ties == tensor.zeros)

    def prune(self, tensor: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """A pruned copy of `tensor`, or `tensor` itself pruned (`in_place`, when contiguous)."""
        if in_place and tensor.is_contiguous():
            out = tensor.view(-1)
        else:
            out = torch.empty(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        for _ in self.chunks(tensor, Scratch(), out):
            pass
        return out.view(tensor.shape)


@dataclass(frozen=True)
class PrunePlan:
    """One TensorCut per planned tensor (None: left as is); apply them in any order."""

    cuts: tuple[TensorCut | None, ...]

    def apply(self, index: int, tensor: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        cut = self.cuts[index]
        return cut.prune(tensor, in_place) if cut is not None else tensor


@dataclass(frozen=True)
class Threshold:
    """The k-th smallest magnitude key over all tensors (`kth_magnitude`) and, per tensor, how
    many keys are below it and equal to it."""

    space: KeySpace
    key: int
    below: tuple[int, ...]
    ties: tuple[int, ...]

    def cuts(self, k: int) -> tuple[TensorCut, ...]:
        """Zero the k smallest: everything below the threshold, then ties in tensor order."""
        remaining = k - sum(self.below)
        cuts = []
        for below, ties in zip(self.below, self.ties, strict=True):
            quota = min(ties, remaining)
            remaining -= quota
            zeros = below + quota if self.key > 0 else ties
            cuts.append(TensorCut(self.space, self.key, ties, quota, zeros))
        return tuple(cuts)


class SamplePositions:
    """Where the stratified sample lies, tensor after tensor: random blocks of SAMPLE_BLOCK
    entries, one per stratum, about SAMPLE entries in all (every entry when the tensors hold no
    more; the threshold is then exact from the sample). Seeded, so tensors of the same sizes
    get the same positions."""

    def __init__(self, total: int) -> None:
        self.rate = min(1.0, SAMPLE / max(total, 1))
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, n: int) -> torch.Tensor | None:
        """Flat positions in the next tensor, of `n` entries (None: all of them)."""
        if self.rate == 1.0:
            return None
        expected = n * self.rate / SAMPLE_BLOCK  # rounded up or down at random: unbiased
        blocks = min(
            n // SAMPLE_BLOCK, math.floor(expected + float(torch.rand((), generator=self.generator)))
        )
        if blocks == 0:
            return torch.empty(0, dtype=torch.long)
        stride = n / blocks
        jitter = torch.rand(blocks, generator=self.generator, dtype=torch.float64) * (stride - SAMPLE_BLOCK)
        starts = (torch.arange(blocks, dtype=torch.float64) * stride + jitter).long()
        return (starts[:, None] + torch.arange(SAMPLE_BLOCK)).reshape(-1)


def sample_of(tensor: torch.Tensor | PackedTensor, positions: torch.Tensor | None) -> torch.Tensor:
    """float32 magnitudes of the tensor at `positions` (None: everywhere; a packed tensor reads
    only those entries)."""
    return entries(tensor, positions).float().abs()


def _bracket(
    keys: torch.Tensor, sample: torch.Tensor, k: int, total: int, estimated: bool
) -> tuple[int, int]:
    """Keys [lo, hi) that hold the k-th smallest key with high probability (surely when the
    sample is everything, read from the tensors). `keys` is the sample in SAMPLE_BLOCK blocks,
    `sample` the same keys sorted. The rank's standard error is taken across blocks (entries of
    one block, one row of a weight matrix, may share a scale), and never below iid sampling's."""
    n = sample.numel()
    if n == total and not estimated:
        key = int(sample[k - 1])
        return key, key + 1
    p = k / total
    blocks = keys.reshape(-1, SAMPLE_BLOCK) if n % SAMPLE_BLOCK == 0 else keys.reshape(1, -1)
    estimate = sample[min(n - 1, int(p * n))]
    below = (blocks < estimate).double().mean(dim=1)
    error = max(
        float(below.std()) / math.sqrt(len(below)) if len(below) > 1 else 0.0, math.sqrt(p * (1 - p) / n)
    )
    spread = SPREAD * error * n + 2
    first, last = math.floor(p * n - spread), math.ceil(p * n + spread)
    lo = int(sample[first]) if first >= 0 else 0
    hi = int(sample[last]) + 1 if last < n else None
    return lo, hi


def _splits(sample: torch.Tensor, lo: int, hi: int) -> list[int]:
    """Thresholds that cut [lo, hi) into parts of similar weight (by the sample), or of equal
    key width where the sample has too few keys inside: each pass narrows the bracket."""
    inside = sample[(sample > lo) & (sample < hi)]
    points = set()
    if inside.numel():
        points = set(inside[torch.linspace(0, inside.numel() - 1, MAX_KEYS - 1).long()].tolist())
    if len(points) < MAX_KEYS // 2:
        points |= set(torch.linspace(lo, hi, MAX_KEYS + 1, dtype=torch.float64).long().tolist())
    return sorted({lo, hi, *points})


@dataclass(frozen=True)
class CountRequest:
    """What one counting pass counts: keys below each threshold, and (when `collect` is set) the
    keys inside [collect[0], collect[1]) themselves."""

    space: KeySpace
    thresholds: tuple[int, ...]
    collect: tuple[int, int] | None = None

    def count(self, chunk: torch.Tensor, scratch: Scratch) -> tuple[list[int], torch.Tensor | None]:
        """One chunk's counts (and collected keys)."""
        if chunk.dtype == self.space.dtype and self.space.bits == 16 and chunk.device.type == "cpu":
            patterns = chunk.contiguous().view(torch.int16).numpy()
            room = scratch.get("collected", torch.int32, patterns.size if self.collect else 0).numpy()
            counted = kernels.count16(patterns, self.thresholds, self.collect, room)
            if counted is not None:  # (one compiled loop: the same counts and keys as below)
                counts, inside = counted
                return counts, None if inside is None else torch.from_numpy(inside)
        keys = _keys(chunk, self.space, scratch)
        counts = [_count_below(keys, key, self.space, scratch) for key in self.thresholds]
        if self.collect is None:
            return counts, None
        low, high = self.collect
        below = dict(zip(self.thresholds, counts, strict=True))
        if low in below and high in below and below[low] == below[high]:  # none inside
            return counts, torch.empty(0, dtype=torch.int32)
        if keys.device.type != "cpu":
            inside = keys >= low
            if high < self.space.limit:  # (the limit itself overflows 16-bit keys)
                inside &= keys < high
            return counts, keys[inside].to(torch.int32).cpu()  # (few: kept on the CPU)
        # on the CPU by NumPy into reused bool buffers, the few keys inside taken by `compress`
        # (a boolean index of a torch tensor costs several times the comparisons)
        values, n = keys.numpy(), keys.numel()
        inside = np.greater_equal(values, low, out=scratch.get("inside", torch.bool, n).numpy())
        if high < self.space.limit:
            inside &= np.less(values, high, out=scratch.get("below", torch.bool, n).numpy())
        return counts, torch.from_numpy(np.compress(inside, values)).to(torch.int32)


class ThresholdSearch:
    """`kth_magnitude`'s search, pass by pass: `request()` says what the next counting pass over
    all tensors must count, `update()` takes its per-tensor results and returns the Threshold
    once it is exact. (A caller already streaming over the tensors can count the first pass there.)"""

    def __init__(
        self,
        magnitudes: torch.Tensor,
        dtypes: Sequence[torch.dtype],
        sizes: Sequence[int],
        k: int,
        estimated: bool = False,
    ) -> None:
        """`magnitudes`: the sample; `estimated`: its values are predictions, not read from the
        tensors (then even a full-size sample only brackets the threshold)."""
        self.space = KeySpace.of(dtypes)
        self.sizes, self.k = list(sizes), k
        keys = self.space.keys_of(magnitudes)
        self.sample = self.space.sorted_keys(keys)
        if keys.numel() == 0:
            self.lo, self.hi = 0, self.space.limit
        else:
            lo, hi = _bracket(keys, self.sample, k, sum(sizes), estimated)
            self.lo, self.hi = lo, self.space.limit if hi is None else hi
        self.inside: int | None = None  # entries in [lo, hi), once known

    def request(self) -> CountRequest:
        """What the next pass counts. The first one also counts below `lo + 1` and collects
        only above it: where the threshold is a key many entries share (the zeros of a model
        already pruned to the rate), that count settles it in one pass, and the tie is never
        collected."""
        lo, hi = self.lo, self.hi
        if hi - lo <= MAX_KEYS:
            return CountRequest(self.space, tuple(range(lo, hi + 1)))
        if self.inside is None:
            return CountRequest(self.space, (lo, lo + 1, hi), (lo + 1, hi))
        if self.inside <= MAX_CANDIDATES:
            return CountRequest(self.space, (lo, hi), (lo, hi))
        return CountRequest(self.space, tuple(_splits(self.sample, lo, hi)))

    def update(
        self,
        request: CountRequest,
        counts: Sequence[Sequence[int]],
        candidates: Sequence[torch.Tensor] | None,
    ) -> Threshold | None:
        """Per-tensor counts of `request` (and its collected keys per tensor, None when they
        overflowed MAX_CANDIDATES)."""
        if len(counts) != len(self.sizes):
            raise ValueError("tensors() yielded a different number of tensors on another call")
        below = {0: [0] * len(self.sizes), self.space.limit: list(self.sizes)}
        below.update({key: [row[j] for row in counts] for j, key in enumerate(request.thresholds)})
        points = sorted(below)
        lo = max(key for key in points if sum(below[key]) < self.k)
        hi = min(key for key in points if key > lo)
        if hi == lo + 1:
            ties = tuple(b - a for a, b in zip(below[lo], below[hi], strict=True))
            return Threshold(self.space, lo, tuple(below[lo]), ties)
        if request.collect == (lo, hi) and candidates is not None:
            rank = self.k - sum(below[lo])
            key = int(torch.cat(list(candidates)).sort().values[rank - 1])
            return Threshold(
                self.space,
                key,
                tuple(b + int((c < key).sum()) for b, c in zip(below[lo], candidates, strict=True)),
                tuple(int((c == key).sum()) for c in candidates),
            )
        self.lo, self.hi, self.inside = lo, hi, sum(below[hi]) - sum(below[lo])
        return None


def _count_tensor(
    tensor: torch.Tensor | PackedTensor, request: CountRequest, scratch: Scratch
) -> tuple[list[int], list[torch.Tensor]]:
    """One tensor's counts of `request`, and its collected keys in parts: a packed tensor's
    over its values alone, its zeros (key 0, below every positive key) added."""
    values, zeros = (tensor.values, tensor.zeros) if isinstance(tensor, PackedTensor) else (tensor, 0)
    row, found = [0] * len(request.thresholds), []
    for _, chunk in chunks(values):
        part, inside = request.count(chunk, scratch)
        row = [a + b for a, b in zip(row, part, strict=True)]
        if inside is not None:
            found.append(inside)
    if zeros:
        row = [
            count + zeros if key > 0 else count for count, key in zip(row, request.thresholds, strict=True)
        ]
        if request.collect is not None and request.collect[0] == 0:  # (a view: no memory until kept)
            found.append(torch.zeros(1, dtype=torch.int32).expand(zeros))
    return row, found


def _count_pass(
    tensors: TensorPasses, request: CountRequest, scratch: Scratch
) -> tuple[list[list[int]], list[torch.Tensor] | None]:
    """Per tensor, the request's counts, and its collected keys (None when they exceed
    MAX_CANDIDATES)."""
    counts: list[list[int]] = []
    candidates: list[torch.Tensor] | None = [] if request.collect is not None else None
    collected = 0
    for tensor in tensors():
        row, found = _count_tensor(tensor, request, scratch)
        counts.append(row)
        if candidates is not None:
            collected += sum(part.numel() for part in found)
            if collected > MAX_CANDIDATES:
                candidates = None
            else:
                candidates.append(torch.cat(found) if found else torch.empty(0, dtype=torch.int32))
    return counts, candidates


def kth_magnitude(tensors: TensorPasses, k: int, total: int | None = None) -> Threshold:
    """The k-th smallest magnitude key (1-based) over all tensors yielded by `tensors()`, which
    is called at least twice (sample, count) and may stream from mapped files. `total` is their
    entry count (found by one more call when not given)."""
    if total is None:
        total = sum(tensor.numel() for tensor in tensors())
    if not 1 <= k <= total:
        raise ValueError(f"k={k} is outside 1..{total}")
    positions = SamplePositions(total)
    parts, dtypes, sizes = [], [], []
    for tensor in tensors():
        parts.append(sample_of(tensor, positions(tensor.numel())))
        dtypes.append(tensor.dtype)
        sizes.append(tensor.numel())
    search = ThresholdSearch(torch.cat(parts) if parts else torch.empty(0), dtypes, sizes, k)
    scratch = Scratch()
    while True:
        request = search.request()
        threshold = search.update(request, *_count_pass(tensors, request, scratch))
        if threshold is not None:
            return threshold


def kth_smallest_magnitude(tensors: TensorPasses, k: int) -> tuple[float, int]:
    """(value, rank) of the k-th smallest |w| (1-based k) over all tensors yielded by
    `tensors()`, where `rank` = how many entries are smaller."""
    threshold = kth_magnitude(tensors, k)
    return threshold.space.value(threshold.key), sum(threshold.below)


def plan_cuts(tensors: TensorPasses, k: int, sizes: Sequence[int]) -> tuple[TensorCut, ...] | None:
    """Cuts that zero exactly the k smallest magnitudes over all tensors (None when k == 0)."""
    total = sum(sizes)
    if k <= 0 or total == 0:
        return None
    if k >= total:
        return tuple(TensorCut(KeySpace(torch.float32), 1 << 31, zeros=n) for n in sizes)
    return kth_magnitude(tensors, k, total).cuts(k)


class RidingSearch:
    """A global threshold search whose first counting pass rides along another pass that
    produces the values (a merge): started from a sample of them (exact, or `estimated`), it
    counts each produced chunk by its tensor's name (from any thread), and `finish` gives the
    exact threshold, with more counting passes over the finished values when the sample's
    bracket missed."""

    def __init__(
        self,
        sample: torch.Tensor,
        names: Sequence[str],
        dtypes: Sequence[torch.dtype],
        sizes: Sequence[int],
        k: int,
        estimated: bool = False,
    ) -> None:
        import threading

        self.search = ThresholdSearch(sample, dtypes, sizes, k, estimated)
        self.request = self.search.request()
        self.index = {name: i for i, name in enumerate(names)}
        self.counts = [[0] * len(self.request.thresholds) for _ in names]
        self.candidates: list[list[torch.Tensor]] = [[] for _ in names]
        self.collected: int | None = 0  # None once past MAX_CANDIDATES
        self.lock = threading.Lock()

    def count(self, name: str, values: torch.Tensor, scratch: Scratch) -> None:
        """Count one chunk of the named tensor (chunks of a tensor may come in any order)."""
        part, inside = self.request.count(values, scratch)
        i = self.index[name]
        with self.lock:
            self.counts[i] = [x + y for x, y in zip(self.counts[i], part, strict=True)]
            if inside is not None and self.collected is not None:
                self.collected += inside.numel()
                self.candidates[i].append(inside)
                if self.collected > MAX_CANDIDATES:  # too many to keep: counts still help
                    self.candidates, self.collected = [[] for _ in self.candidates], None

    def finish(self, passes: TensorPasses | None = None) -> Threshold | None:
        """The threshold from the counted pass; when that was not enough, None, or (given
        `passes` over the finished values, in the names' order) the exact one after more passes."""
        candidates = None
        if self.request.collect is not None and self.collected is not None:
            candidates = [torch.cat(c) if c else torch.empty(0, dtype=torch.int32) for c in self.candidates]
        threshold = self.search.update(self.request, self.counts, candidates)
        scratch = Scratch()
        while threshold is None and passes is not None:
            request = self.search.request()
            threshold = self.search.update(request, *_count_pass(passes, request, scratch))
        return threshold


@dataclass(frozen=True)
class ModelPlan:
    """How a model is pruned, as a value: each prunable tensor's cut by name, in the model's
    order (None: left as is), and the zero counts the pruned model has (name -> (entries,
    zeros), exact, ties and earlier zeros included; none under target=task_vector, whose zeros
    are the task vector's, not the model's), so measuring them reads no tensor."""

    cuts: dict[str, TensorCut | None]
    zero_counts: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, names: Sequence[str], sizes: Sequence[int], plan: PrunePlan, counts_zeros: bool) -> ModelPlan:
        cuts = dict(zip(names, plan.cuts, strict=True))
        zeros = {}
        if counts_zeros:
            zeros = {
                n: (size, cut.zeros) for n, size, cut in zip(names, sizes, plan.cuts, strict=True) if cut
            }
        return cls(cuts, zeros)


def _stored_zeros_plan(tensors: Sequence[torch.Tensor | PackedTensor], k: int) -> PrunePlan | None:
    """The global plan of packed tensors whose stored zeros (+0.0: key 0) number at least k
    (an archive member pruned to the rate), without a sample or a counting pass: the threshold
    is key 0, each tensor's ties its key-0 entries (its zeros and its -0.0 values, counted over
    the values alone). None when a tensor is not packed or the zeros are too few."""
    if not tensors or not all(isinstance(t, PackedTensor) for t in tensors):
        return None
    if not 0 < k < sum(t.numel() for t in tensors) or sum(t.zeros for t in tensors) < k:
        return None
    ties = tuple(t.zeros + t.negative_zeros() for t in tensors)
    threshold = Threshold(KeySpace.of(t.dtype for t in tensors), 0, (0,) * len(tensors), ties)
    return PrunePlan(threshold.cuts(k))


def _read_pass(
    tensors: Mapping[str, torch.Tensor], names: Sequence[str], read=None
) -> Iterator[torch.Tensor | PackedTensor]:
    """Each named tensor as stored (a packed one as it lies: nothing unpacked), or `read(name,
    tensor)` of it; read without a copy where the model is a mapped file, each one's pages
    released once the consumer moves past it."""
    for name in names:
        yield stored(tensors, name) if read is None else read(name, peek(tensors, name))
        release(tensors, name)


@dataclass(frozen=True)
class MagnitudePruner(MagnitudePrunerSettings):
    """Magnitude pruning; `MagnitudePrunerSettings` checks the arguments. Under
    target=task_vector the base's tensors are bound at run time (`with_base`), not configured."""

    base: Mapping[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def with_base(self, base: Mapping[str, torch.Tensor] | None) -> MagnitudePruner:
        """The same pruner measuring task vectors against `base` (a no-op for target=weights)."""
        return dataclasses.replace(self, base=base) if self.needs_base else self

    def prunable(self, name: str) -> bool:
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip)

    def prune_tensor(self, tensor: torch.Tensor, rate: float) -> torch.Tensor:
        """Exactly round(rate * n) zeros (more only if the tensor already had more)."""
        cuts = plan_cuts(lambda: [tensor], round(rate * tensor.numel()), [tensor.numel()])
        return cuts[0].prune(tensor) if cuts else tensor

    def plan(self, tensors: TensorPasses, rate: float, sizes: Sequence[int]) -> PrunePlan:
        """How to prune the tensors yielded by `tensors()` (the prunable ones, of `sizes`
        entries): one threshold over all of them (global), or one per tensor (local)."""
        if self.granularity == "global":
            cuts = plan_cuts(tensors, round(rate * sum(sizes)), sizes)
            return PrunePlan(cuts if cuts is not None else (None,) * len(sizes))
        local = []
        for tensor, n in zip(tensors(), sizes, strict=True):
            cuts = plan_cuts(lambda t=tensor: [t], round(rate * n), [n])
            local.append(cuts[0] if cuts else None)
        return PrunePlan(tuple(local))

    def ranked(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """What the magnitudes are taken of: the weights, or theta - theta_base in float32 (exact:
        a float32 difference is 0 only where the two weights are equal)."""
        if not self.needs_base:
            return tensor
        if self.base is None:
            raise ValueError("pruner.target=task_vector needs a base model (model.base); none is bound")
        return tensor.float() - self.base[name].float()

    def targets(self, tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """What this pruner prunes, as a model: the tensors themselves (weights), or a view
        with theta - theta_base in place of each prunable tensor (task_vector), lazy when the
        input is, so a sparsity measure reads the same object the pruner ranks."""
        if not self.needs_base:
            return tensors

        def target(name: str, tensor: torch.Tensor) -> torch.Tensor:
            return self.ranked(name, tensor) if self.prunable(name) else tensor

        if isinstance(tensors, LazyTensors):
            return tensors.map(target)
        return {name: target(name, t) for name, t in tensors.items()}

    def apply(self, plan: ModelPlan, name: str, tensor: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """One tensor pruned by a model's plan (itself when the plan leaves it; in place when
        asked and possible, under target=weights)."""
        cut = plan.cuts.get(name)
        if cut is None:
            return tensor
        if not self.needs_base:
            return cut.prune(tensor, in_place)
        kept = cut.prune(self.ranked(name, tensor))
        return torch.where(kept == 0, self.base[name].to(tensor.dtype), tensor)

    def model_plan(self, tensors: Mapping[str, torch.Tensor], rate: float) -> ModelPlan:
        """The plan for a model's prunable tensors (read pass by pass, without copies where the
        model is a mapped file)."""
        names = [name for name in tensors if self.prunable(name)]
        sizes = [numel(tensors, name) for name in names]
        read = self.ranked if self.needs_base else None
        plan = None
        if read is None and self.granularity == "global":
            plan = _stored_zeros_plan([stored(tensors, name) for name in names], round(rate * sum(sizes)))
        if plan is None:
            plan = self.plan(lambda: _read_pass(tensors, names, read), rate, sizes)
        return ModelPlan.of(names, sizes, plan, counts_zeros=not self.needs_base)

    def prune(self, tensors: Mapping[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
        """A pruned copy of a model's tensors (the input is left untouched)."""
        plan = self.model_plan(tensors, rate)
        return {name: self.apply(plan, name, t) for name, t in tensors.items()}

    def pruned(self, tensors: LazyTensors, rate: float) -> tuple[LazyTensors, ModelPlan]:
        """A lazy pruned view of lazily read tensors, and its plan: the plan is made now
        (streaming over them), each tensor is read and pruned when accessed, so nothing whole
        is held."""
        plan = self.model_plan(tensors, rate)
        return tensors.map(lambda name, t: self.apply(plan, name, t)), plan

    def prune_(self, tensors: dict[str, torch.Tensor], rate: float) -> ModelPlan:
        """Prune a model the caller gives up, where it lies: its tensors are overwritten (under
        target=task_vector replaced one at a time), so no second model is allocated; returns
        the plan (its zero counts are the pruned model's)."""
        plan = self.model_plan(tensors, rate)
        for name in plan.cuts:
            tensors[name] = self.apply(plan, name, tensors[name], in_place=True)
        return plan
