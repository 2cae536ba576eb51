"""Merge models with the configured method: `python run.py [overrides]` (see README.md)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's objective (the chosen model's selection score on optimization data) to
    Hydra's sweepers: tuning against it never looks at test data."""
    from sae_merging.runtime.runner import main as run

    results = run(cfg, HydraConfig.get().runtime.output_dir)
    return results["objective"] if results else None


if __name__ == "__main__":
    main()
