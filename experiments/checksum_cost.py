"""What the checkpoint's per-file checksum adds to saving an individual, measured side by side:

    python experiments/checksum_cost.py [FOLDER]     # FOLDER: where to write (default: a temp dir)

Saves a 256 MB bf16 model (half its tensors pruned, so both stored forms occur) with and without
the checksum pass, alternately, 3 times each, and prints the fastest of each and their ratio.
"""

import sys
import tempfile
import time

import torch

from sae_merging.runtime import store as store_module
from sae_merging.runtime.store import IndividualStore


def main() -> None:
    torch.manual_seed(0)
    tensors = {f"w{i}": torch.randn(2048, 2048, dtype=torch.bfloat16) for i in range(32)}
    for tensor in list(tensors.values())[::2]:
        tensor[tensor.abs() < 0.8] = 0
    checksums = store_module.folder_digests
    times: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as root:
        store = IndividualStore(root)
        for repeat in range(3):
            for mode in times:
                store_module.folder_digests = checksums if mode == "with" else (lambda folder: {})
                started = time.perf_counter()
                store.save(f"{mode}{repeat}", tensors)
                times[mode].append(time.perf_counter() - started)
                store.delete(f"{mode}{repeat}")
    store_module.folder_digests = checksums
    without, with_ = min(times["without"]), min(times["with"])
    print(f"save 256 MB bf16: without checksums {without:.3f} s, with {with_:.3f} s: {with_ / without:.2f}x")


if __name__ == "__main__":
    main()
