"""The sparsity scoring's settings (`scoring=`), checked before anything heavy is imported."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

SCORINGS = ("global", "local")


@dataclass(frozen=True)
class SparsityScoringSettings(Settings):
    scorer: Callable[..., float]
    granularity: str = "global"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scorer", check.bare(self.scorer))  # (frozen)
        check.choice("granularity", self.granularity, SCORINGS)
