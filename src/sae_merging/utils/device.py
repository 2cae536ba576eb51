"""Which torch device a run uses."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
