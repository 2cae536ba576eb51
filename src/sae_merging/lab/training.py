"""Training loop for the lab's tiny models (causal LM loss, AdamW, warmup + cosine decay)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sae_merging.lab.spec import TrainSpec


@dataclass(frozen=True)
class Sequence_:
    """Token ids of one training text and the mask of positions that carry loss."""

    ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str, loss_on_prompt: bool) -> Sequence_:
    """`prompt + target + EOS` as ids (with the tokenizer's BOS); loss on the target and EOS,
    and on the prompt too when `loss_on_prompt` (plain language modelling)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + target)["input_ids"] + [tokenizer.eos_token_id]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"prompt does not tokenize as a prefix of prompt+target: {prompt!r}")
    mask = [loss_on_prompt and i > 0 for i in range(len(prompt_ids))]
    mask += [True] * (len(ids) - len(prompt_ids))
    return Sequence_(tuple(ids), tuple(mask))


def collate(batch: Sequence[Sequence_], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 where no loss is taken."""
    width = max(len(s.ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        n = len(seq.ids)
        ids = torch.tensor(seq.ids)
        input_ids[row, :n] = ids
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(seq.loss_mask), ids, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def train(
    model: PreTrainedModel,
    data: Sequence[Sequence_],
    spec: TrainSpec,
    seed: int,
    pad_id: int,
    bar=None,
    trainable: Mapping[str, torch.Tensor] | None = None,
) -> list[float]:
    """Train in place on batches drawn (seeded) from `data`; returns the loss per step. `bar`
    (a tqdm bar, or None) advances by one per step and shows the recent loss. `trainable`: a 0/1
    mask per parameter name; masked-out entries get no gradient, so (without weight decay, as
    AdamW moves nothing that never had a gradient) they keep their values exactly."""
    if trainable is not None and spec.weight_decay:
        raise ValueError("masked training needs weight_decay 0 (decay would move frozen entries)")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
    )

    def lr_factor(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses: list[float] = []
    for _ in range(spec.steps):
        batch = collate([data[rng.randrange(len(data))] for _ in range(spec.batch_size)], pad_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainable is not None:
            for name, parameter in model.named_parameters():
                parameter.grad.mul_(trainable[name])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update()
            if len(losses) % 20 == 0:
                bar.set_postfix_str(f"loss {sum(losses[-20:]) / 20:.3f}", refresh=False)
    model.eval()
    return losses
