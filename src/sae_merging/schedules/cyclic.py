"""Sparsity-rate schedules (`schedule=`): the rate s_t used at generation t = 1..steps.

`cyclic` (paper 3.6-3.7, SGDR-like): cycles of length T0, T0*T_mult, T0*T_mult^2, ...; within a
cycle the rate rises from s_min (cosine or linear), then restarts at s_min. Where the rise ends
(`phase`): `endpoint` (default; "the sparsity rate is scheduled to increase from s_min to s_max
within each cycle") reaches s_max at the cycle's last step, position index / (length - 1), and
a one-step cycle, with nothing to rise through, uses s_max; `sgdr` takes SGDR's T_cur / T_i,
index / length, so every cycle starts at s_min, approaches s_max without reaching it, and a
one-step cycle stays at s_min.
`constant`: s_t = rate.
A search stopped by an example budget (`budget.examples`) may run past `steps`: the cycles
simply go on (t = steps + 1 is the next step of the current cycle).

The schedules are light (no torch), so they are their own settings and check their
arguments in `__post_init__` (see `sae_merging.utils.settings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

RISES = ("cosine", "linear")
PHASES = ("endpoint", "sgdr")


@dataclass(frozen=True)
class CyclicSchedule(Settings):
    s_min: float = 0.1
    s_max: float = 0.6
    T0: int = 3
    T_mult: int = 2
    steps: int = 12
    rise: str = "cosine"
    phase: str = "endpoint"

    def __post_init__(self) -> None:
        check.rate("s_min", self.s_min)
        check.rate("s_max", self.s_max)
        if self.s_min > self.s_max:
            raise check.SettingError("s_min", self.s_min, f"must be <= s_max ({self.s_max!r})")
        check.integer("T0", self.T0, 1)
        check.integer("T_mult", self.T_mult, 1)
        check.integer("steps", self.steps, 1)
        check.choice("rise", self.rise, RISES)
        check.choice("phase", self.phase, PHASES)

    def position(self, t: int) -> tuple[int, int]:
        """(index within its cycle, cycle length) of generation t (1-based)."""
        if t < 1:
            raise ValueError(f"generation {t}: generations start at 1")
        start, length = 1, self.T0
        while t >= start + length:
            start += length
            length *= self.T_mult
        return t - start, length

    def rate(self, t: int) -> float:
        index, length = self.position(t)
        if self.phase == "sgdr":
            x = index / length
        else:
            x = 1.0 if length == 1 else index / (length - 1)
        shape = (1 - math.cos(math.pi * x)) / 2 if self.rise == "cosine" else x
        return self.s_min + (self.s_max - self.s_min) * shape

    def rates(self) -> list[float]:
        return [self.rate(t) for t in range(1, self.steps + 1)]

    @property
    def range(self) -> tuple[float, float]:
        return self.s_min, self.s_max


@dataclass(frozen=True)
class ConstantSchedule(Settings):
    rate_value: float = 0.3
    steps: int = 12

    def __post_init__(self) -> None:
        check.rate("rate_value", self.rate_value)
        check.integer("steps", self.steps, 1)

    def rate(self, t: int) -> float:
        if t < 1:
            raise ValueError(f"generation {t}: generations start at 1")
        return self.rate_value

    def rates(self) -> list[float]:
        return [self.rate_value] * self.steps

    @property
    def range(self) -> tuple[float, float]:
        return self.rate_value, self.rate_value
