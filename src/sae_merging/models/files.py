"""Checks of model files that read only their headers (no torch, no transformers).

A model named by a local path must be a folder with a `config.json` and weights whose headers
parse (safetensors: the 8-byte length and the JSON header, with every tensor's byte range inside
the file; sharded folders: the index and every shard it names; GGUF: the magic and version),
or a `.gguf` file. A tokenizer is asked for where one is needed (the model whose tokenizer the
run uses). Each problem is one line naming the key, the path and what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
GGUF_VERSIONS = (1, 2, 3)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
EXPECTED = "expected a local model folder, a .gguf file, or a hub id like 'owner/name'"


def looks_like_path(spec: str) -> bool:
    """A spec that cannot be a hub id (`owner/name`) names a local path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1


def hub_folder(spec: str) -> Path:
    """The local folder of a hub id's snapshot (downloaded on first use; offline, only what is
    already cached), through huggingface_hub alone (no transformers)."""
    if looks_like_path(spec):
        raise FileNotFoundError(f"model path {spec!r} does not exist ({EXPECTED})")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec, allow_patterns=HUB_PATTERNS)
    except Exception as error:  # offline, unknown repo, gated repo: say which and why
        raise FileNotFoundError(
            f"model {spec!r} is not a local folder and could not be fetched from the "
            f"hub ({type(error).__name__}: {error}); {EXPECTED}"
        ) from error
    return Path(folder)


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file's header does not parse (None when it does)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return (
                    f"{path} is not a safetensors file ({size} bytes, shorter than its 8-byte header length)"
                )
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                return f"{path} is not a safetensors file (header length {length} > file size {size})"
            header = json.loads(handle.read(length))
    except PermissionError:
        return f"{path} is not readable"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path} is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return f"{path} is not a safetensors file (its header is not a JSON object)"
    data = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            return f"{path}: tensor {name!r} has no valid data_offsets"
        if offsets[1] > data:
            return (
                f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of the data, "
                f"which holds {data} bytes"
            )
    return None


def gguf_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except PermissionError:
        return f"{path} is not readable"
    if len(head) < 8 or head[:4] != b"GGUF":
        return f"{path} is not a GGUF file (it does not start with the GGUF magic)"
    (version,) = struct.unpack("<I", head[4:8])
    if version not in GGUF_VERSIONS:
        return f"{path}: GGUF version {version} is not supported ({', '.join(map(str, GGUF_VERSIONS))})"
    return None


def weight_problems(folder: Path) -> list[str]:
    """Problems of a model folder's weights (safetensors single or sharded, or PyTorch .bin)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{index} is not a safetensors index (a JSON object with a 'weight_map')"]
        found = []
        for file in sorted(set(weight_map.values())):
            shard = folder / file
            problem = f"{shard} (named in {index.name}) does not exist" if not shard.is_file() else None
            found += [p for p in [problem or safetensors_problem(shard)] if p]
        return found
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        return [p for p in [safetensors_problem(single)] if p]
    if any(folder.glob("*.safetensors")):
        return [p for f in sorted(folder.glob("*.safetensors")) if (p := safetensors_problem(f))]
    if any(folder.glob("pytorch_model*.bin")):
        return []
    return [f"{folder} holds no weights (model.safetensors, a sharded index or pytorch_model.bin)"]


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def model_problems(key: str, spec: str, need_tokenizer: bool = False) -> list[str]:
    """Problems of the model `spec` names, as `key=spec: ...` lines (hub ids are left to the
    loader: they may be downloaded or cached)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not looks_like_path(spec) and not path.exists():
        return []
    prefix = f"{key}={spec!r}"
    if not path.exists():
        return [f"{prefix}: no such file or folder (a local path or a hub id 'owner/name')"]
    if path.is_file():
        if path.suffix != ".gguf":
            return [f"{prefix}: a file that is not .gguf; expected a model folder or a .gguf file"]
        problem = gguf_problem(path)
        return [f"{prefix}: {problem}"] if problem else []
    if not os.access(path, os.R_OK | os.X_OK):
        return [f"{prefix}: the folder is not readable"]
    if not (path / "config.json").is_file():
        if not any(path.iterdir()):
            return [
                f"{prefix}: the folder is empty; expected a Hugging Face model folder (config.json, weights)"
            ]
        return [f"{prefix}: no config.json; expected a Hugging Face model folder"]
    found = [f"{prefix}: {problem}" for problem in weight_problems(path)]
    if need_tokenizer and not has_tokenizer(path):
        found.append(
            f"{prefix}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); the run needs this "
            "model's tokenizer: copy it into the folder"
        )
    return found
