"""The task loss on one fixed batch, and its values over a plane `theta + a*d1 + b*d2`.

Every model is scored on the same examples with the same tokenization, so differences between
panels come from the weights only. The loss is the causal LM cross-entropy on prompt + target
with loss on the target tokens (and EOS) only, through the model's own `loss_function`, which is
what `model(**batch).loss` computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sae_merging.lab.training import collate, encode
from sae_merging.tasks.base import Example, TaskData, sample_examples


@dataclass(frozen=True)
class FixedBatch:
    """A right-padded batch; `labels` is -100 where no loss is taken."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_examples(cls, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> FixedBatch:
        missing = [e.uid for e in examples if not e.target]
        if missing:
            raise ValueError(f"examples without a target cannot be scored by loss: {missing[:5]}")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        tensors = collate(
            [encode(tokenizer, e.prompt, e.target, loss_on_prompt=False) for e in examples], pad_id
        )
        return cls(**tensors)

    def to(self, device: torch.device | str) -> FixedBatch:
        return FixedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def inputs(self) -> torch.Tensor:
        """Token ids and attention mask stacked into one tensor, pyhessian's single input."""
        return torch.stack([self.input_ids, self.attention_mask])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def fixed_examples(task: TaskData, split: str, size: int, seed: int, stratify: bool) -> list[Example]:
    """The batch's examples: a seeded sample of `size` from the split (by group if `stratify`)."""
    return sample_examples(task.split(split), size, seed, stratify)


class LossAdapter(nn.Module):
    """A causal LM in pyhessian's shape: `forward(inputs) -> logits` and
    `criterion(logits, labels) -> loss`, with `inputs` as `FixedBatch.inputs`."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs[0], attention_mask=inputs[1]).logits

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.loss_function(logits, labels, vocab_size=logits.shape[-1])


def task_loss(model: PreTrainedModel, batch: FixedBatch) -> float:
    """The loss of the model's current weights on the batch (no gradients)."""
    adapter = LossAdapter(model)
    with torch.no_grad():
        return adapter.criterion(adapter(batch.inputs), batch.labels).item()


def grid_coordinates(size: int, span: float) -> np.ndarray:
    """`size` evenly spaced steps in [-span, span]; an odd size has exactly 0.0 in the middle,
    so the centre of the grid is the model itself."""
    if size < 1 or span <= 0:
        raise ValueError(f"a grid needs size >= 1 and span > 0 (got size={size}, span={span})")
    coords = np.linspace(-span, span, size) if size > 1 else np.zeros(1)
    if size % 2:
        coords[size // 2] = 0.0
    return coords


class PlanePerturbation:
    """Moves a model's weights to `theta + a*d1 + b*d2` in place.

    Every move starts from a saved copy of `theta`, so no rounding error accumulates from point
    to point, a zero step leaves a tensor exactly as it was, and leaving the `with` block puts
    the original weights back bit for bit (also on errors)."""

    def __init__(self, model: nn.Module, d1: Mapping[str, torch.Tensor], d2: Mapping[str, torch.Tensor]):
        self.entries = [(p, d1[name], d2[name]) for name, p in model.named_parameters()]
        self.origin: list[torch.Tensor] = []

    def __enter__(self) -> PlanePerturbation:
        self.origin = [p.detach().clone() for p, _, _ in self.entries]
        return self

    @torch.no_grad()
    def move(self, a: float, b: float) -> None:
        for (p, x, y), theta in zip(self.entries, self.origin):
            p.copy_(theta)
            if a:
                p.add_(x, alpha=float(a))
            if b:
                p.add_(y, alpha=float(b))

    @torch.no_grad()
    def restore(self) -> None:
        for (p, _, _), theta in zip(self.entries, self.origin):
            p.copy_(theta)

    def __exit__(self, *exc) -> None:
        self.restore()
        self.origin = []


def plane_points(alphas: np.ndarray, betas: np.ndarray) -> list[tuple[int, int]]:
    """Grid indices `(row j for beta, column i for alpha)` in serpentine order, so that
    consecutive points are neighbours (a warm start of the eigen-solver then helps)."""
    return [
        (j, i)
        for j in range(len(betas))
        for i in (range(len(alphas)) if j % 2 == 0 else reversed(range(len(alphas))))
    ]


def loss_grid(
    model: PreTrainedModel,
    batch: FixedBatch,
    d1: Mapping[str, torch.Tensor],
    d2: Mapping[str, torch.Tensor],
    coords: np.ndarray,
    step: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Loss at every `(alpha_i, beta_j)`; entry `[j, i]` (rows: beta), as matplotlib plots it."""
    grid = np.full((len(coords), len(coords)), np.nan)
    with PlanePerturbation(model, d1, d2) as plane:
        for j, i in plane_points(coords, coords):
            plane.move(coords[i], coords[j])
            grid[j, i] = task_loss(model, batch)
            step()
    return grid
