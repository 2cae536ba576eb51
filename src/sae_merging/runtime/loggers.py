"""Experiment loggers (`logger=`): Weights & Biases, or nothing.

`metrics.jsonl` in the run folder is written whatever the logger; W&B adds curves. W&B runs
offline unless `logger.mode=online` (then it needs `WANDB_API_KEY` or `wandb login`), and its
files go into the run folder, so a run leaves nothing behind elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class NoLogger:
    def start(self, run_dir: Path, config: Mapping[str, Any], name: str) -> None:
        pass

    def log(self, record: Mapping[str, Any]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass


class WandbLogger(NoLogger):
    def __init__(
        self,
        project: str = "sae-merging",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = list(tags or [])
        self.run = None

    def start(self, run_dir: Path, config: Mapping[str, Any], name: str) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            group=self.group,
            tags=self.tags,
            name=name,
            dir=str(run_dir),
            config=dict(config),
            resume="allow",
            id=_run_id(run_dir),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "generation"}
            self.run.log(numbers, step=int(record["generation"]))

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
            self.run.finish()
            self.run = None


def _run_id(run_dir: Path) -> str:
    """A W&B id stable for a run folder, so a resumed run continues the same W&B run."""
    from sae_merging.utils.files import stable_hash

    return stable_hash(str(run_dir.resolve()), length=16)
