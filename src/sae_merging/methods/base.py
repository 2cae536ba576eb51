"""The interfaces of a merging method (two today; issue 24 plans one ask/tell loop).

- Generations: `initialize(ctx)` / `step(ctx, state, generation)` / `candidates(ctx, state)` /
  `best(ctx, state)` and a `state_type`, the `Evolutionary` protocol of the shared generation
  loop (`sae_merging.runtime.loop`), which adds the example budget, checkpoints, resume,
  metrics and the progress bar. The searches (SAE, PSO, M2N2) use it, and so do the one-shot
  merges (`one_shot.py`: one generation per point of the scaling grid).
- One call: `run(ctx) -> Outcome` (below), for the expert controls (`expert.py`), which merge
  nothing and need no checkpoint.

The runner tells them apart by whether the method has `step`. The types they exchange are in
`sae_merging.runtime.context`.
"""

from __future__ import annotations

from typing import Protocol

from sae_merging.runtime.context import Outcome, RunContext


class Method(Protocol):
    """A method that runs in one call (the generation loop's protocol: `runtime.loop`)."""

    name: str

    def run(self, ctx: RunContext) -> Outcome: ...
