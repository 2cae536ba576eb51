"""Experiment loggers (`logger=`): Weights & Biases, or nothing.

`metrics.jsonl` in the run folder is written whatever the logger; W&B adds curves (every metric
against `generation`, so a resumed run's curves continue where they stopped), the chosen model
and `results.json` as artifacts, and the final scores as the run summary. W&B runs offline
unless `logger.mode=online` (then it needs `WANDB_API_KEY` or `wandb login`), and its files go
into the run folder, so a run leaves nothing behind elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

WANDB_MODES = ("offline", "online", "disabled", "shared")


class NoLogger(Settings):
    """Logs nothing (`logger=none`); `metrics.jsonl` is still written."""

    def start(self, run_dir: Path, config: Mapping[str, Any], name: str) -> None:
        pass

    def log(self, record: Mapping[str, Any]) -> None:
        pass

    def log_outputs(self, results_file: Path, model_dir: Path) -> None:
        """The run's outputs once written: `results.json` and the chosen model's folder."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass


@dataclass(eq=False)
class WandbLogger(NoLogger):
    """W&B; wandb itself is imported only when the run starts (its arguments are checked here)."""

    project: str = "sae-merging"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: Sequence[str] = ()

    def __post_init__(self) -> None:
        check.text("project", self.project)
        check.text("entity", self.entity, optional=True)
        check.choice("mode", self.mode, WANDB_MODES)
        self.tags = list(self.tags or [])
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
        self.run.define_metric("generation")
        self.run.define_metric("*", step_metric="generation")

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(wandb_values(record))

    def log_outputs(self, results_file: Path, model_dir: Path) -> None:
        """`results.json` as a file artifact; the model by reference to its folder (not copied:
        a paper-scale model is gigabytes)."""
        if self.run is None:
            return
        import wandb

        results = wandb.Artifact(f"results-{self.run.id}", type="results")
        results.add_file(str(results_file))
        self.run.log_artifact(results)
        model = wandb.Artifact(f"model-{self.run.id}", type="model")
        model.add_reference(Path(model_dir).resolve().as_uri())
        self.run.log_artifact(model)

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
            self.run.finish()
            self.run = None


def wandb_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """What W&B gets of a metrics line: the numbers (the generation among them, the x axis),
    and each list of numbers (e.g. every mixing ratio of the generation, `ratio/values`) as a
    histogram."""
    import wandb

    values: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            values[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            values[key] = wandb.Histogram(value)
    return values


def _run_id(run_dir: Path) -> str:
    """A W&B id stable for a run folder, so a resumed run continues the same W&B run."""
    from sae_merging.utils.files import stable_hash

    return stable_hash(str(run_dir.resolve()), length=16)
