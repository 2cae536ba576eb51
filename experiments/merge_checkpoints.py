"""Task arithmetic of whole checkpoints, streamed from disk: merge models larger than RAM.

    python experiments/merge_checkpoints.py --base BASE --experts E1 E2 --scale 0.7 --out merged/
    python experiments/merge_checkpoints.py --base BASE --experts E1 E2 --prune 0.6 --out merged/

BASE and the experts are Hugging Face model folders with safetensors weights (one file or
shards) or hub ids. The output is a model folder (`model.safetensors`, config, generation config
and tokenizer of the base) that `AutoModelForCausalLM.from_pretrained` loads. Weights go through
`sae_merging.merging.streaming` chunk by chunk, so memory holds a few MB of buffers, not the
models; with `--prune RATE` the merged model is then magnitude-pruned to RATE (exactly
round(RATE * n) zeros over all prunable tensors, or per tensor with `--granularity local`).
The result equals `merging.functions.task_arithmetic` (then `MagnitudePruner.prune`) computed in
memory, bit for bit. Tensors must match by name and shape (checked from the file headers before
any weight is read); experts whose vocabulary differs from the base's are refused here (`run.py`
merges them with `model.vocab_policy=common_rows`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def input_problems(
    base: str,
    experts: list[str],
    out: str | Path,
    scale: float,
    weights: list[float] | None,
    prune: float | None,
    granularity: str,
) -> list[str]:
    """Every bad argument, one line each, found without importing torch or reading weights: the
    numbers, the model folders (headers parse; the base has the tokenizer the output gets) and
    the output folder."""
    from sae_merging.models.files import model_problems
    from sae_merging.pruning.settings import GRANULARITIES
    from sae_merging.runtime.preflight import folder_problem
    from sae_merging.utils import settings as check

    found = []
    for key, value, test in (
        ("--scale", scale, lambda v: check.number("", v)),
        ("--weights", weights, lambda v: check.numbers("", v, 0, optional=True, nonempty=True)),
        ("--prune", prune, lambda v: v is None or check.rate("", v)),
        ("--granularity", granularity, lambda v: check.choice("", v, GRANULARITIES)),
    ):
        try:
            test(value)
        except check.SettingError as error:
            found.append(f"{key} {value}: {error.allowed}")
    if weights is not None and len(weights) != len(experts):
        found.append(f"--weights: {len(weights)} weights for {len(experts)} experts")
    found += model_problems("--base", base, need_tokenizer=True)
    for index, expert in enumerate(experts):
        found += model_problems(f"--experts[{index}]", expert)
    if problem := folder_problem(Path(out).parent, "--out"):
        found.append(problem)
    if Path(out).exists() and not Path(out).is_dir():
        found.append(f"--out {out}: is a file; the output is a model folder")
    return found


def merge_checkpoints(
    base: str,
    experts: list[str],
    out: str | Path,
    scale: float = 1.0,
    weights: list[float] | None = None,
    prune: float | None = None,
    granularity: str = "global",
) -> Path:
    """Write the merged (and optionally pruned) model folder `out`; returns it. Every input is
    checked first (`input_problems`), so nothing is merged that could not be saved."""
    from sae_merging.utils.settings import ConfigError

    if problems := input_problems(base, experts, out, scale, weights, prune, granularity):
        raise ConfigError(problems)
    from transformers import GenerationConfig

    from sae_merging.merging import streaming
    from sae_merging.models.io import SAFETENSORS_FILE, ModelRef, load_config, load_tokenizer
    from sae_merging.pruning.magnitude import MagnitudePruner
    from sae_merging.utils.files import atomic_directory

    pruner = MagnitudePruner(granularity)
    folders = [ModelRef.parse(spec).local_dir() for spec in (base, *experts)]
    config = load_config(str(folders[0]))
    with atomic_directory(out) as tmp:
        merged = tmp / SAFETENSORS_FILE
        streaming.stream_task_arithmetic(folders[0], folders[1:], scale, merged, weights)
        if prune is not None:
            pruned = tmp / "pruned.safetensors"
            streaming.stream_prune(merged, prune, pruner, pruned)
            pruned.replace(merged)
        config.save_pretrained(tmp)
        try:
            generation = GenerationConfig.from_pretrained(folders[0])
        except OSError:  # the base has none: derive it, as save_pretrained does
            generation = GenerationConfig.from_model_config(config)
        generation.save_pretrained(tmp)
        load_tokenizer(str(folders[0])).save_pretrained(tmp)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base model folder or hub id")
    parser.add_argument("--experts", nargs="+", required=True, help="expert model folders or hub ids")
    parser.add_argument("--out", required=True, help="output model folder (written atomically)")
    parser.add_argument("--scale", type=float, default=1.0, help="lambda (default 1)")
    parser.add_argument("--weights", type=float, nargs="+", help="w_i per expert (default 1 each)")
    parser.add_argument("--prune", type=float, help="magnitude-prune the result to this rate")
    parser.add_argument("--granularity", default="global", help="pruning: global (default) | local")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        out = merge_checkpoints(
            args.base, args.experts, args.out, args.scale, args.weights, args.prune, args.granularity
        )
    except (ValueError, FileNotFoundError) as error:  # bad inputs (ConfigError: one line each)
        for line in getattr(error, "problems", None) or [str(error)]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
