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


def floors(name: str, report: dict) -> list[tuple[str, str, bool]]:
    """The floors the preset is built to meet (docs/lab.md): (floor, measured, met); none for
    other labs (micro)."""
    if name not in PRESETS:
        return []
    acc = {m: {t: 100 * v for t, v in s.items()} for m, s in report["test_accuracy"].items()}
    gain = report["normalized_gain"]
    math_t, ml_t = list(acc["base"])
    mean = {m: (s[math_t] + s[ml_t]) / 2 for m, s in acc.items()}
    best = max(mean["math"], mean["multilingual"])
    ta_kept = [gain["task_arithmetic"][t] for t in (math_t, ml_t)]
    if name == "low_interference":
        return [
            (
                "task_arithmetic keeps >= 0.9 of both gains",
                f"{ta_kept[0]:.2f} / {ta_kept[1]:.2f}",
                min(ta_kept) >= 0.9,
            )
        ]
    if name == "high_interference":
        return [
            (
                "task_arithmetic mean <= better expert's mean",
                f"{mean['task_arithmetic']:.1f} vs {best:.1f}",
                mean["task_arithmetic"] <= best,
            )
        ]
    margins = (
        acc["math"][math_t] - acc["multilingual"][math_t],
        acc["multilingual"][ml_t] - acc["math"][ml_t],
    )
    average_kept = [gain["average"][t] for t in (math_t, ml_t)]
    return [
        (
            "each expert beats the other on its task by >= 25",
            f"{margins[0]:.1f} / {margins[1]:.1f}",
            min(margins) >= 25,
        ),
        (
            "task_arithmetic mean >= better expert's + 5",
            f"{mean['task_arithmetic'] - best:+.1f}",
            mean["task_arithmetic"] - best >= 5,
        ),
        (
            "multitask mean >= task_arithmetic's + 4",
            f"{mean['multitask'] - mean['task_arithmetic']:+.1f}",
            mean["multitask"] - mean["task_arithmetic"] >= 4,
        ),
        (
            "average keeps <= 0.8 of the gain on a task",
            f"{average_kept[0]:.2f} / {average_kept[1]:.2f}",
            min(average_kept) <= 0.8,
        ),
    ]


def floors_table(name: str, report: dict) -> str:
    """The preset's floors as a Markdown table ("" for other labs)."""
    rows = "\n".join(
        f"| {floor} | {measured} | {'met' if met else '**not met**'} |"
        for floor, measured, met in floors(name, report)
    )
    return rows and f"| floor | measured | |\n|---|---|---|\n{rows}"


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
            kept = [float("nan") if k is None else k for k in kept]  # the expert gained nothing
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
        checks = floors_table(name, report)
        checks = f"\n\n{checks}" if checks else ""
        sections.append(f"### lab={name}\n\n{report_table(report)}{checks}\n")
    atomic_write_json(args.out / "presets.json", reports)
    atomic_write_text(args.out / "presets.md", "\n".join(sections))
    figure(reports, args.out / "kept_gain.png")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
