"""Checking that models can be merged, from their configs and tensor headers only.

Run before any heavy work: models with another architecture, other tensor names or other
shapes are refused with the first offending tensor and both shapes. A vocabulary mismatch
(embedding / LM-head rows differ, as between some MergeBench checkpoints and their base) follows
`vocab_policy`:

- `refuse` (default): an error, like any other shape mismatch;
- `common_rows`: the first `min(vocab sizes)` rows are merged; the rows beyond come unchanged
  from the reference model (the first one given: the base when there is one), so the merged
  model keeps the reference's vocabulary and tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PretrainedConfig

from sae_merging.models.io import (
    Checkpoint,
    ModelRef,
    load_config,
    tied_aliases,
)
from sae_merging.models.settings import VOCAB_POLICIES
from sae_merging.utils.settings import InputError


class IncompatibleModelsError(InputError):
    """The models cannot be merged tensor by tensor."""


@dataclass
class Compatibility:
    """What the check found: the tensors to merge (name -> reference shape), and the vocabulary
    tensors whose rows are merged only up to `common_rows[name]`."""

    shapes: dict[str, tuple[int, ...]]
    common_rows: dict[str, int] = field(default_factory=dict)


def tensor_shapes(ref: str | ModelRef) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape without reading weights: safetensors headers for local folders,
    the hub's header API for hub ids not downloaded yet, the loaded model for other formats."""
    ref = ModelRef.parse(ref)
    aliases = tied_aliases(load_config(ref))
    if not ref.gguf_file and not ref.is_local:
        shapes = _hub_shapes(ref.path)
        if shapes is not None:
            return {k: v for k, v in shapes.items() if k not in aliases}
    checkpoint = Checkpoint(ref)
    return {name: checkpoint.shape(name) for name in checkpoint.names()}


def _hub_shapes(repo_id: str) -> dict[str, tuple[int, ...]] | None:
    try:
        from huggingface_hub import get_safetensors_metadata

        metadata = get_safetensors_metadata(repo_id)
    except Exception:  # offline or not safetensors: fall back to the downloaded files
        return None
    return {
        name: tuple(info.shape)
        for file in metadata.files_metadata.values()
        for name, info in file.tensors.items()
    }


def check_compatible(
    refs: Sequence[str | ModelRef],
    labels: Sequence[str] | None = None,
    vocab_policy: str = "refuse",
) -> Compatibility:
    """Refuse models that cannot be merged; see the module docstring. `refs[0]` is the
    reference whose shapes the merged model takes."""
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab_policy={vocab_policy!r}; valid: {', '.join(VOCAB_POLICIES)}")
    refs = [ModelRef.parse(r) for r in refs]
    labels = list(labels) if labels else [str(r) for r in refs]
    configs = [load_config(r) for r in refs]
    for label, config in zip(labels[1:], configs[1:]):
        if not _same_architecture(config, configs[0]):
            raise IncompatibleModelsError(
                f"{label} is a {_architecture(config)} but {labels[0]} is a "
                f"{_architecture(configs[0])}: only models of one architecture can be merged"
            )
    all_shapes = [tensor_shapes(r) for r in refs]
    vocab_sizes = [getattr(c, "vocab_size", None) for c in configs]
    reference = all_shapes[0]
    result = Compatibility(shapes=dict(reference))
    for label, shapes, vocab in zip(labels[1:], all_shapes[1:], vocab_sizes[1:]):
        missing = [n for n in reference if n not in shapes]
        extra = [n for n in shapes if n not in reference]
        if missing or extra:
            name = (missing or extra)[0]
            where = f"in {labels[0]} but not in {label}" if missing else f"in {label} but not in {labels[0]}"
            raise IncompatibleModelsError(
                f"tensor {name!r} is {where} ({len(missing)} missing, {len(extra)} extra)"
            )
        for name, shape in reference.items():
            other = shapes[name]
            if other == shape:
                continue
            vocab_rows = (shape[0], other[0]) == (vocab_sizes[0], vocab) and shape[1:] == other[1:]
            if vocab_rows and vocab_policy == "common_rows":
                rows = min(shape[0], other[0], result.common_rows.get(name, shape[0]))
                result.common_rows[name] = rows
                continue
            hint = (
                " (a vocabulary mismatch: vocab_policy=common_rows merges the shared rows)"
                if vocab_rows
                else ""
            )
            raise IncompatibleModelsError(
                f"tensor {name!r} has shape {list(shape)} in {labels[0]} but {list(other)} in {label}{hint}"
            )
    return result


def _architecture(config: PretrainedConfig) -> str:
    return "/".join(getattr(config, "architectures", None) or [config.model_type])


def _same_architecture(a: PretrainedConfig, b: PretrainedConfig) -> bool:
    """Same model type, and the same model classes where both configs name them: a config built in
    code (the lab's) or read from a GGUF file names none, one written by `save_pretrained` does."""
    if a.model_type != b.model_type:
        return False
    classes = [getattr(c, "architectures", None) for c in (a, b)]
    return not all(classes) or list(classes[0]) == list(classes[1])
