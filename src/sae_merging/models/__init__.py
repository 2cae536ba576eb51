"""Model I/O: load and save Hugging Face causal LMs, lazy tensor access, compatibility checks."""

from sae_merging.models.compat import (
    Compatibility,
    IncompatibleModelsError,
    check_compatible,
)
from sae_merging.models.io import (
    Checkpoint,
    ModelRef,
    load_config,
    load_model,
    load_state_dict,
    load_tokenizer,
    save_model_folder,
    tied_aliases,
)

__all__ = [
    "Checkpoint",
    "Compatibility",
    "IncompatibleModelsError",
    "ModelRef",
    "check_compatible",
    "load_config",
    "load_model",
    "load_state_dict",
    "load_tokenizer",
    "save_model_folder",
    "tied_aliases",
]
