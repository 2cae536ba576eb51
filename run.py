"""Merge models with the configured method: `python run.py [overrides]` (see README.md)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from sae_merging.runtime.runner import main as run

    results = run(cfg, HydraConfig.get().runtime.output_dir)
    return results["test"]["mean"] if results else None


if __name__ == "__main__":
    main()
