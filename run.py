"""Merge models with the configured method: `python run.py [overrides]` (see README.md).

Only light modules are imported before the config is checked, so a bad setting is reported
in about a second; every bad input (ours or Hydra's) exits with status 2.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

_job_started = False


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's objective (the chosen model's selection score on optimization data) to
    Hydra's sweepers: tuning against it never looks at test data."""
    global _job_started
    _job_started = True
    from sae_merging.runtime.cli import main as run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    results = run(
        cfg,
        hydra_cfg.runtime.output_dir,
        overrides=list(hydra_cfg.overrides.task),
        multirun=multirun,
        sweep_dir=hydra_cfg.sweep.dir if multirun else None,
    )
    return results["objective"] if results else None


if __name__ == "__main__":
    try:
        main()
    except SystemExit as done:  # Hydra reports its own errors (bad overrides, ...) with status 1
        failed_jobs = type(done).__name__ == "SweepFailed"  # runtime.sweep: exit 1 as it is
        sys.exit(2 if done.code == 1 and not _job_started and not failed_jobs else done.code)
