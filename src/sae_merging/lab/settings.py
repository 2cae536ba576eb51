"""The lab pools' settings (`model=lab`, `task=lab`), checked before anything heavy is imported:
the `lab` node must make a valid `LabSpec`; the expert and task names are the lab's own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sae_merging.lab.spec import EXPERTS, MATH_TASK, MULTILINGUAL_TASK, LabSpec
from sae_merging.models.settings import DTYPE_NAMES, VOCAB_POLICIES
from sae_merging.tasks.settings import check_sizes, per_task
from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

DEFAULT_CACHE = "outputs/cache/lab"


def _spec(lab: Mapping) -> LabSpec:
    try:
        return LabSpec.from_dict(dict(lab))
    except check.SettingError as error:
        key = f"lab.{error.key}".rstrip(".")
        raise check.SettingError(key, error.value, error.allowed, absolute=True) from None


@dataclass(eq=False)
class LabModelPoolSettings(Settings):
    lab: Mapping = field(default_factory=dict)
    dtype: str = "float32"
    vocab_policy: str = "refuse"
    progress: bool = True

    expert_names = list(EXPERTS)
    has_base = True
    base = None

    def __post_init__(self) -> None:
        self.lab = dict(self.lab)
        self.spec = _spec(self.lab)
        check.choice("dtype", self.dtype, DTYPE_NAMES)
        check.choice("vocab_policy", self.vocab_policy, VOCAB_POLICIES)
        check.flag("progress", self.progress)

    @property
    def cache_dir(self) -> str:
        return str(self.lab.get("cache_dir", DEFAULT_CACHE))


@dataclass(eq=False)
class LabTaskPoolSettings(Settings):
    lab: Mapping = field(default_factory=dict)
    opt_size: Mapping[str, int | None] = field(default_factory=dict)
    test_size: Mapping[str, int | None] = field(default_factory=dict)
    stratify: Sequence[str] = ()
    progress: bool = True
    validation_size: Mapping[str, int | float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lab = dict(self.lab)
        self.spec = _spec(self.lab)
        self.validation_size = per_task(self.validation_size, self.declared_names())
        self.opt_size, self.test_size, self.stratify, self.validation_size = check_sizes(
            self.declared_names(), self.opt_size, self.test_size, self.stratify, self.validation_size
        )
        check.flag("progress", self.progress)

    @property
    def has_validation(self) -> bool:
        return any(size is not None for size in self.validation_size.values())

    def declared_names(self) -> list[str]:
        return [MATH_TASK, MULTILINGUAL_TASK]

    @property
    def cache_dir(self) -> str:
        return str(self.lab.get("cache_dir", DEFAULT_CACHE))
