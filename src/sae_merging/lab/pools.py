"""The lab as a model pool (`model=lab`) and a task pool (`task=lab`): built on first use and
cached (see `sae_merging.lab.build`), then offered like any other models and tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

from sae_merging.lab.build import build_lab
from sae_merging.lab.settings import LabModelPoolSettings, LabTaskPoolSettings
from sae_merging.models.io import ModelRef
from sae_merging.models.pool import ModelPool
from sae_merging.tasks.base import TaskData
from sae_merging.tasks.pool import TaskPool


class LabModelPool(ModelPool):
    """The lab's base and experts, built on first use and cached (see `sae_merging.lab`)."""

    def __init__(
        self,
        lab: Mapping,
        dtype: str = "float32",
        vocab_policy: str = "refuse",
        progress: bool = True,
    ) -> None:
        self.settings = LabModelPoolSettings(lab, dtype, vocab_policy, progress)  # checks
        self.lab, self.spec, self.progress = self.settings.lab, self.settings.spec, progress
        self.dtype, self.vocab_policy = dtype, vocab_policy

    def problems(self) -> list[str]:
        return []

    @cached_property
    def build(self):
        return build_lab(self.spec, self.settings.cache_dir, self.progress)

    @property
    def base(self) -> ModelRef:
        return ModelRef.parse(self.build.base)

    @property
    def has_base(self) -> bool:
        return True

    @property
    def experts(self) -> list[ModelRef]:
        return [ModelRef.parse(path) for path in self.build.experts.values()]


class LabTaskPool(TaskPool):
    """lab-math and lab-multilingual from the lab build (built on first use)."""

    def __init__(
        self,
        lab: Mapping,
        opt_size: Mapping[str, int | None] | None = None,
        test_size: Mapping[str, int | None] | None = None,
        stratify: Sequence[str] = (),
        progress: bool = True,
        validation_size: Mapping[str, int | float | None] | None = None,
    ) -> None:
        self.settings = LabTaskPoolSettings(
            lab, opt_size, test_size, stratify, progress, validation_size
        )  # checks
        self.lab, self.spec, self.progress = self.settings.lab, self.settings.spec, progress
        self.opt_size, self.test_size = self.settings.opt_size, self.settings.test_size
        self.stratify, self.validation_size = self.settings.stratify, self.settings.validation_size
        self._held_out: dict = {}

    @cached_property
    def _lab_tasks(self) -> list[TaskData]:
        return build_lab(self.spec, self.settings.cache_dir, self.progress).tasks()

    @property
    def tasks(self) -> list[TaskData]:
        return self._lab_tasks
