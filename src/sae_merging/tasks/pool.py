"""Task pools: the tasks a merge is optimized and tested on, and how their samples are drawn.

The optimization sample is drawn from each task's `opt` split (the paper re-draws 1,319 GSM8K
and 200 MMLU-ProX items per generation); the test set is the task's `test` split, whole or a
seeded subset, stratified by `Example.group` where asked (MMLU-ProX by language).

`validation_size` holds out a seeded part of the `opt` split as the validation set (per task a
count, or a share in (0, 1) of the split; one number: the same for every task): the
per-generation draws never contain it, so `selection=validation` picks the final model on
examples no candidate was optimized on (and never on test data). Null: no validation set,
the draws use the whole `opt` split (the paper's reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

from sae_merging.tasks.base import Example, TaskData, sample_examples, validation_examples
from sae_merging.tasks.settings import TaskPoolSettings
from sae_merging.utils.files import stable_hash


class TaskPoolBase:
    """What every task pool offers once its settings are checked: its tasks' seeded samples
    (optimization draws, validation and test sets). A pool derives from this and from its
    settings (`TaskPool`, `sae_merging.lab.pools.LabTaskPool`)."""

    tasks: list[TaskData]
    opt_size: Mapping[str, int | None]
    test_size: Mapping[str, int | None]
    stratify: set[str]
    validation_size: Mapping[str, int | float | None]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @cached_property
    def _held_out(self) -> dict[tuple[str, int], list[Example]]:
        return {}

    def task(self, name: str) -> TaskData:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"unknown task {name!r}; tasks: {self.names}")

    def validation_set(self, task: TaskData, seed: int) -> list[Example]:
        """The held-out part of a task's `opt` split (seeded; empty without `validation_size`)."""
        key = (task.name, seed)
        if key not in self._held_out:
            size = self.validation_size.get(task.name)
            pool = task.split("opt")
            if isinstance(size, float):
                size = max(1, round(size * len(pool)))
            if size is None:
                held = []
            elif size >= len(pool):
                raise ValueError(
                    f"task.validation_size.{task.name}={size}: must be below the {len(pool)} "
                    "examples of its opt split (the rest is drawn from)"
                )
            else:
                held = validation_examples(task.name, pool, size, seed, task.name in self.stratify)
            self._held_out[key] = held
        return self._held_out[key]

    def draw_pool(self, task: TaskData, seed: int) -> list[Example]:
        """The `opt` split without the validation set: what optimization draws come from."""
        held = {e.uid for e in self.validation_set(task, seed)}
        return [e for e in task.split("opt") if e.uid not in held]

    def opt_sample(self, task: TaskData, seed: int, draw: int) -> list[Example]:
        """The `draw`-th optimization sample of a task (seeded, reproducible)."""
        draw_seed = int(stable_hash([seed, draw, task.name, "opt"]), 16)
        return sample_examples(
            self.draw_pool(task, seed), self.opt_size.get(task.name), draw_seed, task.name in self.stratify
        )

    def test_set(self, task: TaskData, seed: int) -> list[Example]:
        draw_seed = int(stable_hash([seed, task.name, "test"]), 16)
        examples = sample_examples(
            task.split("test"), self.test_size.get(task.name), draw_seed, task.name in self.stratify
        )
        order = {e.uid: i for i, e in enumerate(task.split("test"))}
        return sorted(examples, key=lambda e: order[e.uid])


class TaskPool(TaskPoolBase, TaskPoolSettings):
    """Tasks plus per-task sample sizes (`None`: the whole split); the arguments are
    `TaskPoolSettings`."""
