"""The child's loops, compiled (`utils/kernels.c`) against the NumPy/torch code they replace, per
entry, in one process: each on 16M bf16 entries at 60% zeros in chunks of 1M, one torch thread,
fastest of 7; then the first touch of a new tensor with and without the huge-page hint
(`kernels.fresh`). Prints a Markdown table.

    python experiments/kernel_loops.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from sae_merging.merging import functions
from sae_merging.pruning import magnitude
from sae_merging.utils import kernels, packed

N, CHUNK = 1 << 24, 1 << 20


def ns_per_entry(job: Callable[[], object], entries: int = N, repeat: int = 7) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        job()
        best = min(best, time.perf_counter() - started)
    return best / entries * 1e9


def first_touch(hint: bool) -> float:
    """ns per entry of writing a new 128 MB bf16 tensor once."""
    tensor = kernels.fresh((4 * N,), torch.bfloat16) if hint else torch.empty(4 * N, dtype=torch.bfloat16)
    return ns_per_entry(lambda: tensor.fill_(1), 4 * N, repeat=1)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(N, generator=g).to(torch.bfloat16) for _ in range(2))
    for x in (a, b):
        x[torch.rand(N, generator=g) < 0.6] = 0
    out = torch.zeros(N, dtype=torch.bfloat16)
    member = packed.PackedTensor(*packed.pack(a), (N,))
    space = magnitude.KeySpace(torch.bfloat16)
    request = magnitude.CountRequest(space, tuple(range(15000, 16600, 200)), (16000, 16010))
    scratch = magnitude.Scratch()
    starts = range(0, N, CHUNK)
    jobs = {
        "unpack a packed member": lambda: [None for _ in member.chunks(CHUNK)],
        "eq. 4 into a written output": lambda: [
            functions.linear(a[s : s + CHUNK], b[s : s + CHUNK], 0.37, out=out[s : s + CHUNK]) for s in starts
        ],
        "pack (mask + values, into new arrays)": lambda: packed.pack(a),
        "a search's count: 8 keys + the keys in a bracket": lambda: [
            request.count(a[s : s + CHUNK], scratch) for s in starts
        ],
    }
    print(f"loops {kernels.describe()}, load average {os.getloadavg()[0]:.2f}")
    compiled = {name: ns_per_entry(job) for name, job in jobs.items()}
    library = kernels.library
    kernels.library = lambda: None  # the NumPy/torch code
    reference = {name: ns_per_entry(job) for name, job in jobs.items()}
    kernels.library = library
    print("| loop (ns per entry) | NumPy/torch | compiled | speed-up |\n|---|---:|---:|---:|")
    for name in jobs:
        before, after = reference[name], compiled[name]
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.1f}x |")
    plain = min(first_touch(False) for _ in range(5))
    hinted = min(first_touch(True) for _ in range(5))
    print(f"| first touch of a new 128 MB tensor: plain, huge-page hint | {plain:.2f} | {hinted:.2f} | |")


if __name__ == "__main__":
    main()
