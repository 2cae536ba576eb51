"""Measurement 2: global magnitude pruning of the base to 60% (the exact threshold, then every
prunable tensor zeroed, chunk by chunk: the plan SAE prunes its parents by) against one pass
over its prunable weights: `torch.count_nonzero` of each mapped tensor (the reference of the
floor). Shown too: a chunked float32 sum pass (conversion into a preallocated buffer, then sum),
the threshold search alone, and writing an unpruned copy of the model (read + write, no
threshold: what the file write costs by itself).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import RATE, Row, best_of


def reference_passes(files: list[Path], repeat: int) -> dict[str, float]:
    """Seconds of one pass over the base's prunable weights: count_nonzero per mapped tensor,
    and a chunked float32 sum (copy_ into a preallocated buffer, then sum)."""
    from sae_merging.pruning.magnitude import CHUNK, MagnitudePruner
    from sae_merging.utils.tensorfiles import TensorFile

    pruner = MagnitudePruner("global")
    with TensorFile(files[0]) as file:
        names = [n for n in file.names() if pruner.prunable(n)]
        buffer = torch.empty(CHUNK)

        def count_nonzero() -> None:
            for name in names:
                torch.count_nonzero(file.view(name))
                file.release(name)

        def float_sum() -> None:
            for name in names:
                flat = file.view(name).reshape(-1)
                for start in range(0, flat.numel(), CHUNK):
                    part = flat[start : start + CHUNK]
                    buffer[: part.numel()].copy_(part).sum()
                file.release(name)

        return {
            "count_nonzero": best_of(repeat, count_nonzero),
            "float_sum": best_of(repeat, float_sum),
            "prunable_bytes": sum(file.nbytes(n) for n in names),
        }


def plan_seconds(files: list[Path], repeat: int) -> float:
    """Seconds to find the exact 60% threshold of the base (sample + counting pass), no writing."""
    from sae_merging.merging.streaming import _plan
    from sae_merging.pruning.magnitude import MagnitudePruner
    from sae_merging.utils.tensorfiles import TensorFile

    with TensorFile(files[0]) as file:
        return best_of(repeat, lambda: _plan(MagnitudePruner("global"), file, RATE))


def prune_pass_seconds(files: list[Path], repeat: int) -> float:
    """Seconds to prune the base to 60% in memory: the exact threshold, then every prunable
    tensor zeroed chunk by chunk into a reused buffer (pruning without the file write)."""
    from sae_merging.merging.streaming import _plan
    from sae_merging.pruning.magnitude import MagnitudePruner, Scratch
    from sae_merging.utils.tensorfiles import TensorFile

    def prune() -> None:
        scratch = Scratch()
        with TensorFile(files[0]) as file:
            for name, cut in _plan(MagnitudePruner("global"), file, RATE).items():
                if cut is not None:
                    for _ in cut.chunks(file.view(name), scratch):
                        pass
                file.release(name)

    return best_of(repeat, prune)


def measure(args, files: list[Path], copy_file: float, results: dict) -> list[Row]:
    """Measurement 2's rows."""
    rows: list[Row] = []
    reference = reference_passes(files, args.repeat)
    plan = plan_seconds(files, args.repeat)
    in_place = prune_pass_seconds(files, args.repeat)
    results["prune"] = {**reference, "plan": plan, "copy_file": copy_file, "pass": in_place}
    count = reference["count_nonzero"]
    ratio = in_place / count
    rows.append(
        Row(
            f"global magnitude pruning to {RATE:.0%} (threshold + zeroing pass)",
            f"{in_place:.2f} s",
            f"count_nonzero pass {count:.2f} s",
            ratio,
            "<= 4",
            ratio <= 4,
        )
    )
    rows.append(
        Row(
            "  same, against a float32 chunked-sum pass",
            f"{in_place:.2f} s",
            f"float32 sum pass {reference['float_sum']:.2f} s",
            in_place / reference["float_sum"],
        )
    )
    rows.append(
        Row(
            "  threshold only (sample + counting pass)",
            f"{plan:.2f} s",
            f"count_nonzero pass {count:.2f} s",
            plan / count,
        )
    )
    rows.append(
        Row(
            "  writing an unpruned copy (read + write)",
            f"{copy_file:.2f} s",
            f"count_nonzero pass {count:.2f} s",
            copy_file / count,
        )
    )
    return rows
