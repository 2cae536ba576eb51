"""The pruner's settings (`pruner=`), checked before anything heavy is imported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

GRANULARITIES = ("local", "global")
TARGETS = ("weights", "task_vector")
DEFAULT_SKIP = ("*embed*", "*norm*", "*.bias", "lm_head*")


@dataclass(frozen=True)
class MagnitudePrunerSettings(Settings):
    granularity: str = "global"  # one threshold over all pruned tensors (conf/pruner/magnitude.yaml)
    skip: Sequence[str] = DEFAULT_SKIP
    target: str = "weights"  # or task_vector: prune theta - theta_base (needs model.base)

    def __post_init__(self) -> None:
        check.choice("granularity", self.granularity, GRANULARITIES)
        check.choice("target", self.target, TARGETS)
        if isinstance(self.skip, str) or not all(isinstance(p, str) for p in self.skip):
            raise check.SettingError("skip", self.skip, "must be a list of fnmatch patterns")

    @property
    def needs_base(self) -> bool:
        return self.target == "task_vector"
