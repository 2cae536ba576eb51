"""The `sae-merge` command starts fast: a merge, its --help and its errors import none of
transformers, lm-eval, wandb or hydra (checked with `python -X importtime`, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_merging.merging.functions import task_arithmetic
from sae_merging.runtime.merge_command import copy_model_files
from sae_merging.utils.tensorfiles import lazy_tensors, write_tensors

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"transformers", "lm_eval", "wandb", "hydra"}
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 1, "eos_token_id": 2}


def _folder(path: Path, seed: int, tokenizer: bool = True) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    tensors = {
        "model.embed_tokens.weight": torch.randn(8, 4, generator=g).bfloat16(),
        "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g).bfloat16(),
    }
    write_tensors(path / "model.safetensors", tensors.items(), {"format": "pt"})
    (path / "config.json").write_text(json.dumps(CONFIG))
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by `-X importtime`'s lines."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-X", "importtime", "-m", "sae_merging.runtime.merge_command", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [_folder(root / name, seed) for seed, name in enumerate(("base", "e1", "e2"))]


def test_merge_imports_none_of_the_heavy_packages(models, tmp_path):
    out = tmp_path / "merged"
    done = _command("--base", str(models[0]), "--experts", *map(str, models[1:]), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    imported = _imported(done.stderr)
    assert "torch" in imported  # (the measurement saw the merge's imports)
    assert not imported & HEAVY, imported & HEAVY
    parents = [lazy_tensors(m / "model.safetensors") for m in models]
    merged = lazy_tensors(out / "model.safetensors")
    for name in merged:
        expected = task_arithmetic(parents[0][name], [p[name] for p in parents[1:]], 1.0)
        assert torch.equal(merged[name], expected), name
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize("args,status", [(["--help"], 0), (["--prune", "2"], 2)])
def test_help_and_errors_import_not_even_torch(models, tmp_path, args, status):
    required = ["--base", str(models[0]), "--experts", str(models[1]), "--out", str(tmp_path / "o")]
    done = _command(*(args if args == ["--help"] else required + args))
    assert done.returncode == status, done.stderr[-2000:]
    assert not _imported(done.stderr) & (HEAVY | {"torch"})
    if status:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: --prune 2.0: must be a finite number in [0, 1)"]


def test_a_missing_generation_config_is_derived_as_transformers_does(tmp_path):
    from transformers import AutoConfig, GenerationConfig

    source = _folder(tmp_path / "base", 0)
    target = tmp_path / "out"
    target.mkdir()
    copy_model_files(source, target)
    ours = GenerationConfig.from_pretrained(target)
    reference = GenerationConfig.from_model_config(AutoConfig.from_pretrained(source))
    unversioned = {"transformers_version": None}
    assert ours.to_dict() | unversioned == reference.to_dict() | unversioned
    assert (ours.bos_token_id, ours.eos_token_id) == (1, 2)
