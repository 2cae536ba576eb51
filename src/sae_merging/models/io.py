"""Loading and saving Hugging Face causal LMs: local folders, hub ids and GGUF files.

A model is named by one string: a local folder, a local `.gguf` file, or a hub id (downloaded
on first use, for online users; `HF_HUB_OFFLINE=1` makes a missing download an error, not a
hang). Tensors are read lazily from safetensors (memory-mapped), so a merge can stream them one
at a time; a GGUF file is dequantized once by transformers (`gguf_file=`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sae_merging.models.files import hub_folder
from sae_merging.utils.files import atomic_directory, cache_root
from sae_merging.utils.tensorfiles import (
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TensorFile,
    TensorFileWriter,
    TensorSource,
    has_tensor_files,
    open_tensor_file,
    write_tensors,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files of a base folder that a merged model keeps as they are: generation defaults (sampling
# settings, every end token), the tokenizer and its chat template.
CARRIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: `path` is a local folder or hub id, `gguf_file` a file name
    inside it when the weights are GGUF."""

    path: str
    gguf_file: str | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike | ModelRef) -> ModelRef:
        if isinstance(spec, ModelRef):
            return spec
        spec = str(spec)
        if spec.endswith(".gguf"):
            file = Path(spec)
            if not file.is_file():
                raise FileNotFoundError(f"GGUF file {spec!r} does not exist")
            return cls(str(file.parent.resolve()), file.name)
        return cls(spec)

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()

    def __str__(self) -> str:
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path

    def local_dir(self) -> Path:
        """The folder holding the files: the local path, or the hub snapshot (downloaded on
        first use; offline, only what is already cached)."""
        if self.is_local:
            return Path(self.path)
        return hub_folder(self.path)

    def load_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def model_kwargs(self) -> dict:
        """`load_kwargs` for a model. GGUF weights are unpacked into plain tensors: merging needs
        their values, and a model left quantized (blocks in custom layers, a GGUF
        `quantization_config`) would be saved as a quantized one that its folder does not hold."""
        if not self.gguf_file:
            return {}
        return {**self.load_kwargs(), "quantization_config": GgufConfig(dequantize=True)}


def load_config(ref: str | ModelRef) -> PretrainedConfig:
    """The model's config (an owned copy). A GGUF file's is parsed once per process and file
    version: transformers reads the whole metadata, tokenizer vocabulary included, for it
    (about 7 s for SmolLM2-135M here), and a run asks for it five times."""
    ref = ModelRef.parse(ref)
    if ref.gguf_file:
        stat = (Path(ref.path) / ref.gguf_file).stat()
        return copy.deepcopy(_gguf_config(ref.path, ref.gguf_file, stat.st_size, stat.st_mtime_ns))
    return AutoConfig.from_pretrained(ref.local_dir(), **ref.load_kwargs())


@lru_cache(maxsize=8)
def _gguf_config(path: str, gguf_file: str, size: int, mtime_ns: int) -> PretrainedConfig:
    """A GGUF file's config, by its path, size and modification time (see `load_config`)."""
    return AutoConfig.from_pretrained(path, gguf_file=gguf_file)


def load_tokenizer(ref: str | ModelRef) -> PreTrainedTokenizerBase:
    ref = ModelRef.parse(ref)
    source = ref.local_dir() if not ref.gguf_file else ref.path
    tokenizer = AutoTokenizer.from_pretrained(source, **ref.load_kwargs())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    ref: str | ModelRef,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A causal LM in `dtype` on `device`, in eval mode."""
    ref = ModelRef.parse(ref)
    source = ref.local_dir() if not ref.gguf_file else ref.path
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=parse_dtype(dtype), **ref.model_kwargs(), **kwargs
    )
    return model.to(device).eval()


def tied_aliases(config: PretrainedConfig) -> dict[str, str]:
    """Names that are views of another tensor (`lm_head.weight` -> the input embedding when
    embeddings are tied): they are neither merged nor saved a second time."""
    tied = getattr(config, "tie_word_embeddings", False)
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        tied = tied or getattr(text_config, "tie_word_embeddings", False)
    return {"lm_head.weight": "model.embed_tokens.weight"} if tied else {}


GGUF_CACHE = "gguf"  # under `files.cache_root()`


def dequantize_gguf(gguf: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write a GGUF file's weights, dequantized to float32 by transformers, as `folder`/
    model.safetensors (in the loaded model's tensor order, tied aliases left out; atomic)."""
    model = load_model(str(gguf))
    aliases = tied_aliases(model.config)
    tensors = [(k, v.detach()) for k, v in model.state_dict().items() if k not in aliases]
    layout = [(name, t.dtype, tuple(t.shape)) for name, t in tensors]
    with atomic_directory(folder) as tmp:
        write_tensors(tmp / SAFETENSORS_FILE, tensors, {"format": "pt"}, layout)
    return Path(folder)


def dequantized_folder(ref: ModelRef) -> Path:
    """A GGUF model's weights as a memory-mapped safetensors folder: dequantized once, in a
    subprocess (so this process never holds the dequantized copy, nor the memory its allocator
    keeps after transformers' GGUF loading: 0.6 GB for a 0.54 GB model), cached under
    $SAE_MERGING_CACHE/gguf by the file's name, size and modification time."""
    gguf = Path(ref.path) / ref.gguf_file
    stat = gguf.stat()
    folder = cache_root() / GGUF_CACHE / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if not (folder / SAFETENSORS_FILE).is_file():
        package = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)
        script = "import sys; from sae_merging.models.io import dequantize_gguf as d; d(*sys.argv[1:])"
        done = subprocess.run(
            [sys.executable, "-c", script, str(gguf), str(folder)],
            env={**os.environ, "PYTHONPATH": path},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dequantizing {gguf} failed:\n{done.stderr[-3000:]}")
    return folder


class Checkpoint:
    """Read-only, lazy access to a model's tensors by name.

    Safetensors files (one or a sharded folder) are opened memory-mapped and a tensor is read
    only when asked for; a GGUF file is dequantized once into such a file (`dequantized_folder`)
    and read the same way; other formats (PyTorch .bin) are loaded once through transformers.
    Tied aliases are left out of `names()`.
    """

    def __init__(self, ref: str | ModelRef) -> None:
        self.ref = ModelRef.parse(ref)
        self._tensors: dict[str, torch.Tensor] | None = None
        self._folder: Path | None = None
        if self.ref.gguf_file:
            self._folder = dequantized_folder(self.ref)
        elif has_tensor_files(self.ref.local_dir()):
            self._folder = self.ref.local_dir()
        else:
            model = load_model(self.ref)
            aliases = tied_aliases(model.config)
            self._tensors = {k: v.detach() for k, v in model.state_dict().items() if k not in aliases}

    @cached_property
    def config(self) -> PretrainedConfig:
        return load_config(self.ref)

    @cached_property
    def files(self) -> TensorSource:
        """The mapped safetensors file(s) (only for safetensors checkpoints)."""
        return open_tensor_file(self._folder)

    def names(self) -> list[str]:
        """In the loaded model's order (a GGUF file's too), a sharded index's order, or a single
        file's sorted order (the order safetensors lists its keys in, whoever wrote the file)."""
        aliases = tied_aliases(self.config)
        if self._tensors is not None:
            names = list(self._tensors)
        elif isinstance(self.files, TensorFile) and not self.ref.gguf_file:
            names = sorted(self.files.names())
        else:
            names = self.files.names()
        return [name for name in names if name not in aliases]

    def shape(self, name: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[name].shape)
        return self.files.shape(name)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, as an owned copy for safetensors (the mapping itself is read-only)."""
        if self._tensors is not None:
            return self._tensors[name]
        return self.files.get(name)

    def state_dict(self, dtype: str | torch.dtype | None = None) -> dict[str, torch.Tensor]:
        dtype = parse_dtype(dtype)
        return {n: self.get(n).to(dtype) if dtype else self.get(n) for n in self.names()}


def load_state_dict(ref: str | ModelRef, dtype: str | torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a model by name (tied aliases left out)."""
    return Checkpoint(ref).state_dict(dtype)


def save_model_folder(
    out_dir: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generation_config: GenerationConfig | None = None,
    max_shard_bytes: int = 5 * 2**30,
    source: str | ModelRef | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a Hugging Face model folder (safetensors shards, config, tokenizer, generation
    config) atomically: the folder appears complete or not at all.

    `tensors` may be an iterator, so a merge can stream them: only one shard is held at a time.
    Tied aliases are dropped, as `save_pretrained` does. `source`: the model whose generation
    config, tokenizer files and chat template are copied as they are (a folder or hub id; a
    GGUF file holds none, so they are written from its config and tokenizer). `extra_files`:
    more text files by name (a model card).
    """
    out_dir = Path(out_dir)
    aliases = tied_aliases(config)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    with atomic_directory(out_dir) as tmp:
        weight_map, dtypes, total = _write_shards(tmp, items, aliases, max_shard_bytes)
        config = config.__class__.from_dict(config.to_dict())
        if dtypes:
            config.dtype = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None
        config.save_pretrained(tmp)
        if generation_config is None:
            generation_config = GenerationConfig.from_model_config(config)
        generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, file in carried_files(source).items():
            shutil.copyfile(file, tmp / name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        files = sorted(set(weight_map.values()))
        if len(files) == 1:
            os.replace(tmp / files[0], tmp / SAFETENSORS_FILE)
        else:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return out_dir


def carried_files(source: str | ModelRef | None) -> dict[str, Path]:
    """The CARRIED_FILES that the folder of `source` holds (none for a GGUF file)."""
    if source is None:
        return {}
    ref = ModelRef.parse(source)
    if ref.gguf_file:
        return {}
    folder = ref.local_dir()
    return {name: folder / name for name in CARRIED_FILES if (folder / name).is_file()}


def _write_shards(
    folder: Path,
    items: Iterable[tuple[str, torch.Tensor]],
    aliases: Mapping[str, str],
    max_shard_bytes: int,
) -> tuple[dict[str, str], set[torch.dtype], int]:
    """Stream the tensors into shard files of at most `max_shard_bytes` (unless one tensor alone
    is larger), each tensor written as it comes: nothing is held beyond the tensor at hand."""
    weight_map: dict[str, str] = {}
    dtypes: set[torch.dtype] = set()
    writer: TensorFileWriter | None = None
    shard_bytes = total = 0
    try:
        for name, tensor in items:
            if name in aliases:
                continue
            size = tensor.numel() * tensor.element_size()
            if writer is not None and shard_bytes + size > max_shard_bytes:
                writer.close()
                writer = None
            if writer is None:
                shard = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
                writer, shard_bytes = TensorFileWriter(folder / shard, {"format": "pt"}), 0
            writer.write(name, tensor)
            weight_map[name] = writer.path.name
            dtypes.add(tensor.dtype)
            shard_bytes += size
            total += size
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return weight_map, dtypes, total


def iter_tensors(
    checkpoint: Checkpoint, names: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    for name in names if names is not None else checkpoint.names():
        yield name, checkpoint.get(name)
