"""The lab as a model pool (`model=lab`) and a task pool (`task=lab`): built on first use and
cached (see `sae_merging.lab.build`), then offered like any other models and tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

from sae_merging.lab.build import EXPERTS, MATH_TASK, MULTILINGUAL_TASK, LabSpec, build_lab
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
        self.lab = dict(lab)
        self.spec = LabSpec.from_dict(self.lab)
        self.progress = progress
        super().__init__(
            experts=[], base=None, expert_names=list(EXPERTS), dtype=dtype, vocab_policy=vocab_policy
        )

    def problems(self) -> list[str]:
        return []

    @cached_property
    def build(self):
        return build_lab(self.spec, self.lab.get("cache_dir", "outputs/cache/lab"), self.progress)

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
        super().__init__([], opt_size, test_size, stratify, validation_size)
        self.lab = dict(lab)
        self.spec = LabSpec.from_dict(self.lab)
        self.progress = progress

    def declared_names(self) -> list[str]:
        return [MATH_TASK, MULTILINGUAL_TASK]

    @cached_property
    def _lab_tasks(self) -> list[TaskData]:
        return build_lab(self.spec, self.lab.get("cache_dir", "outputs/cache/lab"), self.progress).tasks()

    @property
    def tasks(self) -> list[TaskData]:
        return self._lab_tasks
