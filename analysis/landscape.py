"""Loss landscapes and Hessian convexity maps of experts vs merged models (paper Fig. 3-5).

    python analysis/landscape.py                                   # the lab's two experts
    python analysis/landscape.py models.pso_merged=outputs/runs/<pso run> \
        models.sae_merged=outputs/runs/<sae run>                   # four panels per figure
    python analysis/landscape.py redraw_only=true out_dir=<earlier out_dir>   # figures only

Settings: conf/analysis/landscape.yaml. Outputs: see `sae_merging.analysis.landscape_report`.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis/landscape")
def main(cfg: DictConfig) -> None:
    from sae_merging.analysis.landscape_report import main as run

    run(cfg)


if __name__ == "__main__":
    main()
