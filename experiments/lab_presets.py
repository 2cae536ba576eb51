"""The interference dial side by side: build (or reuse) each lab preset, write its report table
and each preset's kept gain of the 50/50 average, task arithmetic and the multi-task model per
task as a figure.

    python experiments/lab_presets.py                       # low_interference, default, high_interference
    python experiments/lab_presets.py --presets default     # some of them

Writes analysis/figures/lab/presets.{md,json} and analysis/figures/lab/kept_gain.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "analysis" / "figures" / "lab"
PRESETS = ("low_interference", "default", "high_interference")
ROWS = ("average", "task_arithmetic", "multitask")


def preset(name: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"lab={name}"])
    return OmegaConf.to_container(cfg.lab, resolve=True)


def figure(reports: dict[str, dict], path: Path) -> None:
    """One panel per task: kept gain of each reference row, grouped by preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(next(iter(reports.values()))["test_accuracy"]["base"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), sharey=True)
    width = 0.8 / len(ROWS)
    for ax, task in zip(axes, tasks, strict=True):
        for i, row in enumerate(ROWS):
            kept = [reports[p]["normalized_gain"][row][task] for p in reports]
            label = row.replace("_", " ")
            xs = [x + (i - (len(ROWS) - 1) / 2) * width for x in range(len(reports))]
            bars = ax.bar(xs, kept, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(reports)), [p.replace("_", "\n") for p in reports])
        ax.set_title(f"{task}: kept share of the expert's gain")
    axes[0].set_ylabel("(model - base) / (expert - base)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from sae_merging.lab.build import LabSpec, build_lab, report_table
    from sae_merging.utils.files import atomic_write_json, atomic_write_text

    reports, sections = {}, []
    for name in args.presets:
        lab = preset(name)
        report = build_lab(LabSpec.from_dict(lab), lab["cache_dir"], progress=True).report
        reports[name] = report
        sections.append(f"### lab={name}\n\n{report_table(report)}\n")
    atomic_write_json(args.out / "presets.json", reports)
    atomic_write_text(args.out / "presets.md", "\n".join(sections))
    figure(reports, args.out / "kept_gain.png")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
