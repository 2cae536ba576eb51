"""Task arithmetic of whole checkpoints, streamed from disk: merge models larger than RAM.

    sae-merge --base BASE --experts E1 E2 --scale 0.7 --out merged/
    sae-merge --base BASE --experts E1 E2 --prune 0.6 --out merged/
    sae-merge ... --threads 1      # CPU threads (default auto)
    sae-merge ... --out used/ --overwrite   # replace only the files written, keep the rest

(`python experiments/merge_checkpoints.py` is the same command.) BASE and the experts are
Hugging Face model folders with safetensors weights (one file or shards) or hub ids. The output
is a model folder (`model.safetensors`, and the base's config, generation config and tokenizer
files, copied) that `AutoModelForCausalLM.from_pretrained` loads. Weights go through
`sae_merging.merging.streaming` block by block, on `--threads` threads (utils/threads.py), so
memory holds a few MB of buffers, not the models; with `--prune RATE` the merged model is
magnitude-pruned to RATE in the same call (exactly round(RATE * n) zeros over all prunable
tensors, or per tensor with `--granularity local`).
The result equals `merging.functions.task_arithmetic` (then `MagnitudePruner.prune`) computed in
memory, bit for bit. Tensors must match by name and shape (checked from the file headers before
any weight is read); experts whose vocabulary differs from the base's are refused here (`run.py`
merges them with `model.vocab_policy=common_rows`).

The command starts fast: it imports torch and safetensors-level code alone (no transformers,
lm-eval, wandb or hydra; config and tokenizer files are copied as files), and its `--help` and
every error it reports import not even torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# what a model folder holds besides its weights (config, generation config, tokenizer files)
AUX_PATTERNS = ("*.json", "*.model", "*.txt", "*.jinja")
WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
GENERATION_CONFIG = "generation_config.json"
# what a generation config takes from the model's config when the folder has none of its own
# (as transformers' `GenerationConfig.from_model_config` does for a causal LM): the config's
# value, or its default when config.json leaves it out (None: not written)
GENERATION_DEFAULTS = {
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "decoder_start_token_id": None,
    "use_cache": True,
    "output_attentions": False,
    "output_hidden_states": False,
}


def copy_model_files(source: Path, target: Path) -> None:
    """Copy the base's config, generation config and tokenizer files as they are; a missing
    generation config is derived from the config's special tokens, as `save_pretrained` does."""
    for pattern in AUX_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file() and path.name not in WEIGHT_FILES:
                shutil.copy2(path, target / path.name)
    if not (target / GENERATION_CONFIG).is_file():
        config = json.loads((source / "config.json").read_text())
        generation = {key: config.get(key, default) for key, default in GENERATION_DEFAULTS.items()}
        generation = {key: value for key, value in generation.items() if value is not None}
        generation["_from_model_config"] = True
        if "transformers_version" in config:
            generation["transformers_version"] = config["transformers_version"]
        (target / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")


def local_folder(spec: str) -> Path:
    """A model folder as given, or a hub id's downloaded snapshot."""
    if Path(spec).is_dir():
        return Path(spec)
    from sae_merging.models.files import hub_folder

    return hub_folder(spec)


def input_problems(
    base: str,
    experts: list[str],
    out: str | Path,
    scale: float,
    weights: list[float] | None,
    prune: float | None,
    granularity: str,
    overwrite: bool = False,
) -> list[str]:
    """Every bad argument, one line each, found without importing torch or reading weights: the
    numbers, the model folders (headers parse; the base has the tokenizer the output gets) and
    the output folder (never an input, nor a folder holding files unless `overwrite`)."""
    from sae_merging.models.files import model_problems
    from sae_merging.pruning.settings import GRANULARITIES
    from sae_merging.utils import paths
    from sae_merging.utils import settings as check
    from sae_merging.utils.files import folder_problem

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
    inputs = {"--base": base, **{f"--experts[{i}]": e for i, e in enumerate(experts)}}
    found += paths.overlap_problems(out, inputs, "--out")
    if problem := paths.nonempty_problem(out, "--out", overwrite):
        found.append(problem)
    return found


def merge_checkpoints(
    base: str,
    experts: list[str],
    out: str | Path,
    scale: float = 1.0,
    weights: list[float] | None = None,
    prune: float | None = None,
    granularity: str = "global",
    threads: int | str | None = "auto",
    overwrite: bool = False,
) -> Path:
    """Write the merged (and optionally pruned) model folder `out`; returns it. Every input is
    checked first (`input_problems`), so nothing is merged that could not be saved."""
    from sae_merging.utils.settings import ConfigError

    if problems := input_problems(base, experts, out, scale, weights, prune, granularity, overwrite):
        raise ConfigError(problems)
    from sae_merging.utils.threads import apply_threads

    threads = apply_threads(threads, workers=1)  # before torch runs anything
    from sae_merging.merging import streaming
    from sae_merging.pruning.magnitude import MagnitudePruner
    from sae_merging.utils.paths import output_folder, remove_leftovers
    from sae_merging.utils.tensorfiles import SAFETENSORS_FILE

    pruner = MagnitudePruner(granularity)
    folders = [local_folder(spec) for spec in (base, *experts)]
    remove_leftovers([Path(out).parent], [Path(out).name])  # of a killed merge to the same folder
    with output_folder(out) as tmp:
        merged = tmp / SAFETENSORS_FILE
        streaming.stream_task_arithmetic(
            folders[0], folders[1:], scale, merged, weights, prune, pruner, threads
        )
        copy_model_files(folders[0], tmp)
    return Path(out)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-merge", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base model folder or hub id")
    parser.add_argument("--experts", nargs="+", required=True, help="expert model folders or hub ids")
    parser.add_argument("--out", required=True, help="output model folder (written atomically)")
    parser.add_argument("--scale", type=float, default=1.0, help="lambda (default 1)")
    parser.add_argument("--weights", type=float, nargs="+", help="w_i per expert (default 1 each)")
    parser.add_argument("--prune", type=float, help="magnitude-prune the result to this rate")
    parser.add_argument("--granularity", default="global", help="pruning: global (default) | local")
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (default) or N")
    parser.add_argument(
        "--overwrite", action="store_true", help="--out may hold files: replace those written, keep the rest"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    try:
        from sae_merging.utils.threads import parse

        parse(args.threads)  # a bad value is refused before any import
        out = merge_checkpoints(
            args.base,
            args.experts,
            args.out,
            args.scale,
            args.weights,
            args.prune,
            args.granularity,
            args.threads,
            args.overwrite,
        )
    except (ValueError, FileNotFoundError) as error:  # bad inputs (ConfigError: one line each)
        for line in getattr(error, "problems", None) or [str(error)]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a full disk, a read-only folder: the output is not written at all
        from sae_merging.utils.paths import storage_problem

        if (line := storage_problem(error)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    import torch  # imported by the merge already

    print(f"wrote {out} in {time.perf_counter() - started:.1f} s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
