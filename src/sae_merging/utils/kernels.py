"""Compiled loops for the child's hot path over 16-bit entries (`kernels.c`): unpacking and
packing the archive's form, eq. 4 rounded to bf16, a threshold search's counts. NumPy and torch
run each of these as several passes over a chunk (a scatter, a compress, six float32 steps);
one loop does it in one.

The C file is compiled at first use by the system's C compiler (`$CC`, else `cc`) into
`$SAE_MERGING_CACHE/kernels/` (named by a digest of the source, compiler and flags; written
atomically, so processes may race) and loaded with ctypes. Each wrapper returns None where the
library is missing (no compiler, a failed build, or `SAE_MERGING_KERNELS=0`) or the arrays are
not ones it can take as pointers (`linear_bf16`: 0 entries done): the caller then runs its
NumPy/torch code, which gives the same bits (`tests/test_kernels.py` compares them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from sae_merging.utils.files import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
LIMIT = 1 << 15  # one past the largest 16-bit key (the pattern without its sign bit)
FLAGS = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing"]
_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
SIGNATURES = {  # name: (result, arguments)
    "sae_simd": (ctypes.c_int, []),
    "sae_unpack16": (_I64, [_P, _P, _I64, _I64, _P, _I64]),
    "sae_pack16": (_I64, [_P, _I64, _P, _P, _I64]),
    "sae_linear_bf16": (_I64, [_P, _P, _I64, _F32, _F32, _P]),
    "sae_count16": (_I64, [_P, _I64, _P, _I32, _P, _I32, _I32, _P, _I64]),
}


def _compiler() -> list[str] | None:
    """The compiler's command ($CC may carry arguments, e.g. `ccache gcc`), None if not found."""
    command = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    found = shutil.which(command[0])
    return None if found is None else [found, *command[1:]]


def _build(compiler: list[str]) -> Path:
    """The compiled library's path, building it first when the cache lacks it."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([*compiler, version, platform.machine(), *FLAGS]).encode()
    ).hexdigest()[:16]
    target = cache_root() / "kernels" / f"sae_kernels-{digest}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([*compiler, *FLAGS, "-o", str(built), str(SOURCE)], check=True, capture_output=True)
        os.replace(built, target)  # (atomic: a racing process finds one whole file)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None (see the module docstring; the reason is logged once)."""
    if os.environ.get("SAE_MERGING_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler found (set CC): the child's loops run in NumPy/torch (same results, slower)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        log.warning("building %s failed (%s %s): NumPy/torch loops instead", SOURCE.name, error, detail[:500])
        return None
    for name, (result, arguments) in SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    return lib


def describe() -> str:
    """Which loops this process runs (a benchmark's header)."""
    lib = library()
    if lib is None:
        return "NumPy/torch (no compiled loops)"
    simd = [name for bit, name in ((1, "SSSE3"), (2, "AVX2")) if lib.sae_simd() & bit]
    return f"compiled ({' + '.join(simd) or 'plain C'})"


def _address(array: np.ndarray | torch.Tensor) -> int:
    return array.data_ptr() if isinstance(array, torch.Tensor) else array.ctypes.data


def _contiguous(*arrays: np.ndarray) -> bool:
    """Whether the loops may take the arrays as pointers (they read memory in order)."""
    return all(array.flags.c_contiguous for array in arrays)


def unpack16(mask: np.ndarray, values: np.ndarray, first: int, out: np.ndarray) -> int | None:
    """Entries [first, first + out.size) of a packed 16-bit tensor into `out`; `values` starts
    at the first kept entry from `first` on (the mask covers at least first + out.size entries:
    `PackedTensor` checks). Returns how many values it used; None where it cannot run."""
    lib = library()
    if lib is None or not _contiguous(mask, values, out):
        return None
    used = lib.sae_unpack16(_address(mask), _address(values), first, out.size, _address(out), values.size)
    if used < 0:
        raise ValueError(f"packed tensor: its mask marks more entries from {first} on than it has values")
    return used


def pack16(patterns: np.ndarray, mask: np.ndarray, values: np.ndarray) -> int | None:
    """Pack 16-bit `patterns` into `mask` and `values` (sized by the caller); returns the
    values written; None where it cannot run."""
    lib = library()
    if lib is None or not _contiguous(patterns, mask, values):
        return None
    kept = lib.sae_pack16(_address(patterns), patterns.size, _address(mask), _address(values), values.size)
    if kept != values.size:
        raise RuntimeError(f"pack: {kept} non-zero entries where {values.size} were counted")
    return kept


def linear_bf16(a: torch.Tensor, b: torch.Tensor, ratio: float, out: torch.Tensor) -> int:
    """out = eq. 4 of flat bf16 CPU tensors of one size, as `functions.linear` computes it, up
    to the entries it returns (all but from a block holding a NaN result on, whose bf16 pattern
    is torch's to choose; those are left as they were); 0 where it cannot run."""
    lib = library()
    tensors = (a, b, out)
    if lib is None or any(t.numel() != out.numel() for t in tensors):
        return 0
    if not all(t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return 0
    ra, rb = np.float32(ratio), np.float32(1.0 - ratio)  # (torch's float32 scalars)
    return lib.sae_linear_bf16(_address(a), _address(b), a.numel(), ra, rb, _address(out))


def count16(
    keys_of: np.ndarray, thresholds: tuple[int, ...], collect: tuple[int, int] | None, room: np.ndarray
) -> tuple[list[int], np.ndarray | None] | None:
    """A threshold search's counts over 16-bit patterns (keys: the patterns without their sign
    bit): how many keys lie below each threshold, and (given `collect`) the keys in [low,
    high), copied out of the int32 buffer `room` (as large as the input)."""
    lib = library()
    if lib is None or not _contiguous(keys_of):
        return None
    counts = np.zeros(len(thresholds), dtype=np.int64)
    limits = np.clip(thresholds, 0, LIMIT).astype(np.int32)  # (keys lie in [0, LIMIT))
    low, high = collect if collect is not None else (0, 0)  # (the C side clamps them to the keys)
    found = lib.sae_count16(
        _address(keys_of), keys_of.size, _address(limits), len(thresholds), _address(counts),
        low, high, _address(room), room.size,
    )  # fmt: skip
    if found < 0:
        raise RuntimeError(f"count: more keys in [{low}, {high}) than the {room.size} the buffer holds")
    collected = room[:found].copy() if collect is not None else None
    return counts.tolist(), collected


HUGE_PAGE = 1 << 21
MADV_HUGEPAGE = 14  # (Linux)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes, libc.madvise.restype = [_P, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return libc


def fresh(shape, dtype: torch.dtype) -> torch.Tensor:
    """A new CPU tensor whose memory the kernel may back by transparent huge pages (a madvise
    hint for its whole 2 MB pages; nothing changes where THP is off): first touching a model's
    worth of 4 KB pages costs more than mixing into them."""
    tensor = torch.empty(shape, dtype=dtype)
    libc = _libc()
    if libc is not None and tensor.nbytes >= 4 * HUGE_PAGE:
        start = -(-tensor.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        stop = (tensor.data_ptr() + tensor.nbytes) // HUGE_PAGE * HUGE_PAGE
        libc.madvise(start, stop - start, MADV_HUGEPAGE)  # (a hint: its failure changes nothing)
    return tensor
