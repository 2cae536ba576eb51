"""Random directions for 2-D slices of a model's loss, normalized as in Li et al. (2018).

What "shared" means here: the raw Gaussian tensor of a parameter is a pure function of
(seed, direction index, parameter name, shape), drawn on the CPU with its own generator, so every
model of the same architecture gets the very same raw directions, in any order and on any
device, without storing them. Each model then rescales them to its *own* weights (filter
normalization): a step of 1 along a direction moves every filter by that filter's norm, which
removes the scale invariance that would otherwise make sharper-looking plots for models with
smaller weights. Two models therefore share the random draw, not the absolute perturbation.

Normalization (`DirectionSpec`):
- matrices (ndim >= 2): `filter` (default, Li et al.) rescales each row, i.e. each output unit
  or token embedding, to the norm of the model's row; `layer` rescales the whole tensor.
- vectors (norm weights, biases): `zero` (default, Li et al. "ignore biases and BN") leaves them
  out of the plane; `layer` rescales the whole vector to the model's vector norm.
A row whose weights are all zero (pruned) gets a zero direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sae_merging.utils.files import stable_hash

NORMALIZATIONS = ("filter", "layer")
ONE_DIM = ("zero", "layer")


@dataclass(frozen=True)
class DirectionSpec:
    seed: int = 0
    normalization: str = "filter"
    one_dim: str = "zero"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        if self.one_dim not in ONE_DIM:
            raise ValueError(f"one_dim={self.one_dim!r}; valid: {', '.join(ONE_DIM)}")


def raw_direction(name: str, shape: torch.Size | tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    """The un-normalized Gaussian direction of one parameter (float32, CPU)."""
    generator = torch.Generator().manual_seed(int(stable_hash([seed, index, name, list(shape)]), 16))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def normalize(direction: torch.Tensor, weight: torch.Tensor, spec: DirectionSpec) -> torch.Tensor:
    """Rescale `direction` to the norms of `weight` (see the module docstring)."""
    if weight.ndim <= 1:
        if spec.one_dim == "zero":
            return torch.zeros_like(direction)
        return _rescale(direction, weight, None)
    if spec.normalization == "layer":
        return _rescale(direction, weight, None)
    return _rescale(direction, weight, tuple(range(1, weight.ndim)))


def _rescale(direction: torch.Tensor, weight: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    weight = weight.float()
    if dims is None:
        return direction * (weight.norm() / direction.norm().clamp_min(1e-12))
    target = weight.norm(dim=dims, keepdim=True)
    return direction * (target / direction.norm(dim=dims, keepdim=True).clamp_min(1e-12))


def model_direction(model: nn.Module, spec: DirectionSpec, index: int) -> dict[str, torch.Tensor]:
    """Direction `index` (0 or 1 for a plane) for `model`, on its parameters' devices and dtypes.

    `named_parameters()` yields a tied tensor (LM head = input embedding) once, so it is
    perturbed once."""
    with torch.no_grad():
        return {
            name: normalize(raw_direction(name, p.shape, spec.seed, index).to(p.device), p, spec).to(p.dtype)
            for name, p in model.named_parameters()
        }
