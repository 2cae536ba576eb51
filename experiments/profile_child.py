"""Where SAE's child spends its time, stage by stage: the benchmark's SAE job (measurement 1,
`bench/merge_passes.py`:
`method=sae`'s child of two synthetic bf16 checkpoints held as archive members pruned to its
rate, made by `SAE._make_child` and stored in the archive) under cProfile,
one torch thread, after two warm-up children; the fastest of `--repeat` profiled children. Prints
a Markdown table of cumulative seconds. `SAE_MERGING_KERNELS=0` profiles the NumPy/torch loops
instead of the compiled ones (`utils/kernels.py`).

    python experiments/profile_child.py [--params 0.22e9] [--repeat 3] [--workdir /tmp/sae-benchmark]
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import time
from pathlib import Path

# (stage, module path part, function): cumulative seconds of that function (a method named
# Class.method, told apart from same-named ones by its line); a list of them: the first less
# the rest
STAGES = [
    ("parent A read into memory (when loaded: not a packed member)", "merging/child.py", "parents"),
    (
        "parents' thresholds (a member pruned to the rate: its stored zeros; else sample + count)",
        "pruning/magnitude.py",
        "model_plan",
    ),
    ("eq. 5's measures (from the plans' zero counts)", "methods/sae.py", "ratios"),
    (
        "child's threshold search started (merged values at the sample positions)",
        "merging/child.py",
        "_search",
    ),
    ("merge pass: parents' chunks pruned, mixed, child counted", "merging/child.py", "run"),
    (
        "  of which the parents unpacked chunk by chunk",
        [("utils/packed.py", "PackedTensor.chunks"), ("utils/packed.py", "PackedTensor.dense")],
    ),
    ("  of which mixing (eq. 4)", "merging/functions.py", "linear"),
    ("  of which zeroing by cuts (parents' here, child's below)", "pruning/magnitude.py", "_mask_into"),
    ("  of which the child's counting", "pruning/magnitude.py", "RidingSearch.count"),
    ("child's zeroing (exact cuts, in place)", "merging/child.py", "_prune_child"),
    ("writing (archive: count + pack + write + checksum)", "runtime/store.py", "save"),
    ("  of which counting its non-zeros (the file's layout)", "utils/packed.py", "packed_size"),
    ("  of which packing (mask and values)", "utils/packed.py", "pack"),
    ("  of which the file write (`pwrite` into the page cache)", "utils/tensorfiles.py", "_pwrite_all"),
]


def _cumulative(stats: dict, path: str, function: str) -> float:
    line = None
    if "." in function:  # a method: told apart from same-named ones by its line
        import importlib

        module = importlib.import_module("sae_merging." + path.removesuffix(".py").replace("/", "."))
        owner, function = function.split(".")
        line = inspect.getsourcelines(getattr(getattr(module, owner), function))[1]
    return sum(
        v[3]
        for (f, lineno, name), v in stats.items()
        if path in f and name == function and (line is None or lineno == line)
    )


def _stage(stats: dict, spec) -> float:
    if isinstance(spec[1], list):
        first, *rest = spec[1]
        return _cumulative(stats, *first) - sum(_cumulative(stats, *r) for r in rest)
    return _cumulative(stats, spec[1], spec[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=0.22e9)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sae-benchmark"))
    parser.add_argument("--repeat", type=int, default=3, help="profiled children (the fastest reported)")
    args = parser.parse_args()
    import torch
    from bench import common, merge_passes  # experiments/bench/: beside this script

    from sae_merging.utils import kernels

    torch.set_num_threads(1)
    files = common.build_checkpoints(args.workdir / f"llama-{args.params / 1e6:.0f}M", args.params)
    sae = merge_passes.sae_method()
    archive = merge_passes.sae_archive(sae, files[1], files[2], files[1].parent / "sae-archive")
    out = args.workdir / f"profile-child-{os.getpid()}"
    for _ in range(2):
        common.remove_output(out)
        merge_passes.sae_child(sae, archive, out)
    common.remove_output(out)
    runs = []  # (seconds, stats) of each profiled child; the fastest one is reported
    for _ in range(args.repeat):
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        merge_passes.sae_child(sae, archive, out)
        profile.disable()
        runs.append((time.perf_counter() - started, pstats.Stats(profile).stats))
        common.remove_output(out)
    total, stats = min(runs, key=lambda run: run[0])
    print(
        f"SAE child of 2 x {files[1].stat().st_size / 1e9:.2f} GB bf16: {total:.2f} s under cProfile "
        f"(fastest of {args.repeat}: {', '.join(f'{s:.2f}' for s, _ in runs)}), "
        f"load average {os.getloadavg()[0]:.2f}, loops {kernels.describe()}"
    )
    print("| stage | seconds |\n|---|---:|")
    for spec in STAGES:
        print(f"| {spec[0]} | {_stage(stats, spec):.2f} |")
    print(f"| **total under cProfile** | **{total:.2f}** |")


if __name__ == "__main__":
    main()
