"""Build (or reuse) the lab and print its report: test accuracy of the reference rows (the
base, both experts, their 50/50 average, the multi-task model, task arithmetic with its lambda
chosen on the validation split), each row's kept share of the experts' gains, the build time, and
for the interference presets the floors they are built to meet (docs/lab.md).

    python experiments/build_lab.py                 # the default lab (moderate interference)
    python experiments/build_lab.py lab=low_interference
    python experiments/build_lab.py lab=high_interference
    python experiments/build_lab.py lab=micro       # the micro lab used by the tests
    python experiments/build_lab.py threads=1       # CPU threads (default auto: utils/threads.py)
    SAE_MERGING_CACHE=/tmp/fresh python experiments/build_lab.py   # re-measure from scratch
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    from sae_merging.utils.threads import apply_threads

    apply_threads(cfg.get("threads"))
    from lab_presets import floors_table  # beside this script

    from sae_merging.lab.build import LabSpec, build_lab, report_table

    lab = OmegaConf.to_container(cfg.lab, resolve=True)
    build = build_lab(LabSpec.from_dict(lab), lab["cache_dir"], progress=cfg.progress)
    print(f"lab '{lab['name']}' at {build.root}\n")
    print(report_table(build.report))
    if checks := floors_table(lab["name"], build.report):  # the interference presets' floors
        print(f"\n{checks}")


if __name__ == "__main__":
    main()
