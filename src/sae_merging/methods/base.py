"""The interface of a merging method.

A method is a small class with `run(ctx) -> Outcome` (one-shot methods), or an evolutionary
method with `initialize(ctx)` / `step(ctx, state, generation)` / `best(ctx, state)` driven by
the shared generation loop (`sae_merging.runtime.loop`), which adds checkpoints, resume,
metrics and the progress bar. The types they exchange are in `sae_merging.runtime.context`.
"""

from __future__ import annotations

from typing import Protocol

from sae_merging.runtime.context import Outcome, RunContext


class Method(Protocol):
    name: str

    def run(self, ctx: RunContext) -> Outcome: ...
