"""The lab as a model pool (`model=lab`) and a task pool (`task=lab`): built on first use and
cached (see `sae_merging.lab.build`), then offered like any other models and tasks."""

from __future__ import annotations

from functools import cached_property

from sae_merging.lab.build import build_lab
from sae_merging.lab.settings import LabModelPoolSettings, LabTaskPoolSettings
from sae_merging.models.pool import ModelPoolBase
from sae_merging.tasks.base import TaskData
from sae_merging.tasks.pool import TaskPoolBase


class LabModelPool(ModelPoolBase, LabModelPoolSettings):
    """The lab's base and experts, built on first use and cached (see `sae_merging.lab`); the
    arguments are `LabModelPoolSettings`."""

    @cached_property
    def build(self):
        return build_lab(self.spec, self.cache_dir, self.progress)

    @property
    def base(self) -> str:
        return str(self.build.base)

    @property
    def experts(self) -> list[str]:
        return [str(path) for path in self.build.experts.values()]


class LabTaskPool(TaskPoolBase, LabTaskPoolSettings):
    """lab-math and lab-multilingual from the lab build (built on first use); the arguments
    are `LabTaskPoolSettings`."""

    @cached_property
    def tasks(self) -> list[TaskData]:
        return build_lab(self.spec, self.cache_dir, self.progress).tasks()
