"""Results pinned bit for bit: the smoke experiment's chosen model and metrics, per method.

A refactoring must not change a result. For a fixed seed, `experiment=smoke` on the micro lab
(`threads=1`) gives the same `model/` tensors and the same `metrics.jsonl` (wall-clock fields
aside) before and after; the hashes below were computed on the code before the issue-24
refactoring (commit f56ec67) and are compared on every run of the suite.

Updating the pins is a deliberate act, for a change that is meant to move results (a new
default, a fixed bug): say so in the commit message, then print the new pins with

    PYTHONPATH=src python tests/test_pinned_results.py [METHOD ...]

and paste them into `PINNED`. The pins hold for one torch build on one CPU kind (the lab build
and the runs are float arithmetic); on another, recompute them on the old code first.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from safetensors.torch import load_file

from sae_merging.runtime import runner

SMOKE = ["experiment=smoke", "progress=false", "threads=1", "seed=0"]
# what differs between two runs of the same seed: wall-clock times (measured in run twice);
# `config_hash` names the config's text, which a refactoring may change without changing results
UNPINNED_KEYS = ("time", "config_hash")
UNPINNED_PREFIXES = ("seconds/",)
# method -> (hash of the model/ tensors, hash of metrics.jsonl without its timing fields)
PINNED = {
    "sae": (
        "9d183fcbda31ec05dc83f4984bc85ca7e64bf3792fd47241e515640fd373269b",
        "38deeb829e4ac78ef58f902f3fd4721d9b78612fd6434018d098ff5e273928cd",
    ),
    "pso": (
        "3bc60e1e40e1a9cfc0f837063bbc85d49bc285648446dac6b68a71e2d92822cf",
        "9b9bfec2a4dec0760b6c8f23b0909c363d4919a24eb52bf622d56da31ae7a71f",
    ),
    "m2n2": (
        "9179a5652c026e64cd12c1bf8de2b2633b90460495a4668b68189d8163ca8cac",
        "d831a9b858c35d663a30bf4820486d339bce6f51c1071fdd6459c713e9af7189",
    ),
    "task_arithmetic": (
        "e4e1e05dcdbb4ed3989bd2262129081f164e50d708ebdacb680b6371450e4726",
        "387244270285b40d24bd1c9f5362965e086507aee507a48b97943d1c7e109d06",
    ),
    "ties": (
        "f2ee4084cf4d81f018eba3e6c2411d4ac095c15f15a73f42e28695bfd5970afa",
        "b7e92cfe819f061c8e77f51022eaff25b00791d533b1632bc33b58d79ff248e3",
    ),
}
FAST = {"ties"}  # one method in the fast suite (about 2 s); the others run in the slow one


def model_hash(model_dir: Path) -> str:
    """SHA-256 over every tensor of the saved model: name, dtype, shape and raw bytes, by name."""
    digest = hashlib.sha256()
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metrics_hash(path: Path) -> str:
    """SHA-256 over metrics.jsonl, each line without the fields a rerun changes (UNPINNED_*)."""
    digest = hashlib.sha256()
    for line in path.read_text().splitlines():
        record = {
            key: value
            for key, value in json.loads(line).items()
            if key not in UNPINNED_KEYS and not key.startswith(UNPINNED_PREFIXES)
        }
        digest.update(json.dumps(record, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def smoke_hashes(method: str, folder: Path) -> tuple[str, str]:
    runner.run(compose_config([*SMOKE, f"method={method}"]), folder)
    return model_hash(folder / "model"), metrics_hash(folder / "metrics.jsonl")


@pytest.mark.parametrize(
    "method", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in PINNED]
)
def test_smoke_results_are_pinned(method, micro_lab, tmp_path):
    model, metrics = smoke_hashes(method, tmp_path / method)
    pinned_model, pinned_metrics = PINNED[method]
    assert model == pinned_model, f"{method}: model/ tensors changed (new hash {model})"
    assert metrics == pinned_metrics, f"{method}: metrics.jsonl changed (new hash {metrics})"


if __name__ == "__main__":  # print new pins (see the module docstring)
    import tempfile

    # importing conftest (above) set up the offline scratch environment; the run builds the lab
    with tempfile.TemporaryDirectory() as scratch:
        for method in sys.argv[1:] or PINNED:
            model, metrics = smoke_hashes(method, Path(scratch) / method)
            print(f'    "{method}": (\n        "{model}",\n        "{metrics}",\n    ),')
