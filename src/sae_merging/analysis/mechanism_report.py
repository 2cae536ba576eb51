"""SAE's mechanism over generations, from the runs' `metrics.jsonl`: the mixing ratios lambda of
eq. 5 (does sparsity move them away from 1/2?) and which dense experts are still in the archive.

Every SAE run logs, per generation, `ratio/values` (every lambda of the generation's children,
one per pair and tensor) and `archive/experts` (the experts still in the archive). Runs are
grouped by their settings (Hydra overrides without the seed), so a sweep gives one group per
setting and pools its seeds:

- `lambda` per generation: quantiles (5, 50, 95%), mean and sample std of the pooled ratios,
  drawn as a histogram per generation (a heat map: generation x lambda) with the quantiles;
- `survival` per generation: the share of runs in which each expert is still in the archive,
  and per run the last generation it was seen in;
- `omega_gap` per generation: the runs' mean |omega_A - omega_B| over pairs (0: eq. 5 is
  p_A / (p_A + p_B), sparsity does not act on lambda);
- `overall`: lambda pooled over every generation that makes children (1 on), the mean omega
  gap over them, and the mean number of experts alive at the last generation all runs reached:
  one line per setting, the ablation table's mechanism columns; `lambda_spread` and
  `lambda_std`: each run's mean over those generations of its own q95 - q05 (and sample std)
  of lambda, as mean ± sample std [95% t-interval] over runs (`stats.summary`), so that runs,
  not ratios, are the units; `experts_kept`: the share of runs with each expert at that last
  generation; `last_seen_mean`: the mean over runs of the last generation each expert was in.

Runs without the diagnostics (other methods of the same sweep, e.g. PSO) are skipped when
`collect` is given a `skipped` list; otherwise they are an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sae_merging.analysis.run_folders import (
    METRICS_FILE,
    RunFolderError,
    find_runs,
    read_metrics,
    setting_label,
)
from sae_merging.analysis.stats import summary
from sae_merging.utils.files import atomic_write_json

if not os.environ.get("MPLBACKEND"):
    import matplotlib

    matplotlib.use("Agg")

QUANTILES = (0.05, 0.5, 0.95)


class MechanismError(RunFolderError):
    """A run without SAE's diagnostics, or no such run at all."""


def run_mechanism(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One run: per generation its ratios and the experts present."""
    if not records or "archive/experts" not in records[0]:
        raise MechanismError("metrics.jsonl has no `archive/experts`: not an SAE run with diagnostics")
    experts = list(records[0]["archive/experts"])
    generations = [int(r["generation"]) for r in records]
    alive = {e: [e in r.get("archive/experts", []) for r in records] for e in experts}
    last_seen = {
        e: max((g for g, a in zip(generations, alive[e], strict=True) if a), default=None) for e in experts
    }
    ratios = [list(r.get("ratio/values", [])) for r in records]
    return {
        "generations": generations,
        "ratios": ratios,
        "omega_gap": [r.get("omega/gap_mean") for r in records],
        "alive": alive,
        "last_seen": last_seen,
    }


def ratio_stats(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    x = np.asarray(values, dtype=float)
    q = np.quantile(x, QUANTILES)
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        **{f"q{round(100 * level):02d}": float(v) for level, v in zip(QUANTILES, q, strict=True)},
    }


def run_spread(ratios: Sequence[Sequence[float]]) -> dict[str, float] | None:
    """One run's lambda spread: the mean over its generations that make children of the
    generation's q95 - q05 and of its sample std (None when no generation made children)."""
    made = [np.asarray(values, dtype=float) for values in ratios if len(values)]
    if not made:
        return None
    widths = [float(np.subtract(*np.quantile(x, [0.95, 0.05]))) for x in made]
    stds = [float(x.std(ddof=1)) if x.size > 1 else 0.0 for x in made]
    return {"q95_q05": float(np.mean(widths)), "std": float(np.mean(stds))}


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    cell = summary(values)
    return {"mean": cell.mean, "std": cell.std, "n": cell.n, "ci_low": cell.ci_low, "ci_high": cell.ci_high}


def group_mechanism(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Runs of one setting pooled per generation (generations all runs reached)."""
    first = next(iter(runs.values()))
    count = min(len(r["generations"]) for r in runs.values())
    generations = first["generations"][:count]
    experts = list(first["alive"])
    per_generation = []
    for index, generation in enumerate(generations):
        pooled = [v for r in runs.values() for v in r["ratios"][index]]
        survival = {
            e: float(np.mean([r["alive"][e][index] for r in runs.values() if e in r["alive"]]))
            for e in experts
        }
        gaps = [r["omega_gap"][index] for r in runs.values() if r["omega_gap"][index] is not None]
        per_generation.append(
            {
                "generation": generation,
                "lambda": ratio_stats(pooled),
                "omega_gap": float(np.mean(gaps)) if gaps else None,
                "survival": survival,
            }
        )
    making = [g for g in per_generation if g["lambda"] is not None]
    every = [v for r in runs.values() for i in range(count) for v in r["ratios"][i]]
    spreads = [s for s in (run_spread(r["ratios"][:count]) for r in runs.values()) if s is not None]
    overall = {
        "lambda": ratio_stats(every),
        "lambda_spread": _summary([s["q95_q05"] for s in spreads]),
        "lambda_std": _summary([s["std"] for s in spreads]),
        "omega_gap": float(np.mean([g["omega_gap"] for g in making])) if making else None,
        "last_generation": generations[-1],
        "experts_alive": float(sum(per_generation[-1]["survival"].values())),
        "experts_kept": dict(per_generation[-1]["survival"]),
        "last_seen_mean": {
            e: float(np.mean([min(r["last_seen"][e], generations[-1]) for r in runs.values()]))
            for e in experts
        },
    }
    return {
        "runs": sorted(runs),
        "n_runs": len(runs),
        "overall": overall,
        "generations": per_generation,
        "last_seen": {name: dict(r["last_seen"]) for name, r in runs.items()},
    }


def collect(paths: Sequence[Path], skipped: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every run at or under `paths`, by setting: {label: {run folder: run_mechanism}}. A run
    without SAE's diagnostics is an error, or, given `skipped`, appended to it and left out."""
    grouped: dict[str, dict[str, Any]] = defaultdict(dict)
    for path in paths:
        runs = [run for run in find_runs(Path(path)) if (run / METRICS_FILE).is_file()]
        if not runs:
            raise MechanismError(f"{path}: no {METRICS_FILE} at or under it (not a run or sweep folder)")
        for run_dir in runs:
            try:
                mechanism = run_mechanism(read_metrics(run_dir))
            except MechanismError as error:
                if skipped is None:
                    raise MechanismError(f"{run_dir}: {error}") from error
                skipped.append(str(run_dir))
                continue
            grouped[setting_label(run_dir) or "default"][str(run_dir)] = mechanism
    if not grouped:
        raise MechanismError(f"no run with SAE's diagnostics under {', '.join(map(str, paths))}")
    return dict(sorted(grouped.items()))


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:120] or "default"


def draw(report: Mapping[str, Any], raw: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Per group: lambda histograms per generation (heat map + quantiles) and expert survival."""
    import matplotlib.pyplot as plt

    written = []
    for label, group in report.items():
        stats = [g["lambda"] for g in group["generations"]]
        generations = [g["generation"] for g in group["generations"]]
        pooled = [[v for r in raw[label].values() for v in r["ratios"][i]] for i in range(len(generations))]
        every = [v for values in pooled for v in values]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        if every:
            low, high = min(every), max(every)
            pad = max(1e-3, 0.05 * (high - low))
            edges = np.linspace(low - pad, high + pad, 41)
            counts = np.array([np.histogram(values, edges)[0] / max(len(values), 1) for values in pooled])
            image = left.pcolormesh(edges, np.arange(len(generations) + 1) - 0.5, counts, cmap="viridis")
            fig.colorbar(image, ax=left, label="share of the generation's ratios")
            for key, style in (("q05", ":"), ("q50", "-"), ("q95", ":")):
                ys = [i for i, s in enumerate(stats) if s]
                left.plot([stats[i][key] for i in ys], ys, "w" + style, lw=1.2, label=key)
            left.axvline(0.5, color="r", lw=0.8, ls="--", label="1/2")
            left.legend(loc="upper right", fontsize=7)
        left.set_yticks(range(len(generations)), [str(g) for g in generations])
        left.set_xlabel(r"mixing ratio $\lambda$ (eq. 5)")
        left.set_ylabel("generation")
        left.set_title(f"lambda per generation ({group['n_runs']} run(s))", fontsize=10)
        for expert in group["generations"][0]["survival"]:
            right.step(
                generations, [g["survival"][expert] for g in group["generations"]], where="post", label=expert
            )
        right.set_ylim(-0.05, 1.05)
        right.set_xlabel("generation")
        right.set_ylabel("share of runs with the expert in the archive")
        right.set_title("expert survival", fontsize=10)
        right.legend(fontsize=8)
        fig.suptitle(label, fontsize=9)
        path = out_dir / f"{_file_name(label)}_mechanism.png"
        fig.savefig(path, dpi=130)
        plt.close(fig)
        written.append(path)
    return written


def run(paths: Sequence[Path], out_dir: Path, skipped: list[str] | None = None) -> dict[str, Any]:
    """Analyse, write `mechanism.json` and the figures under `out_dir`; returns the report
    (runs without diagnostics: see `collect`)."""
    grouped = collect(paths, skipped)
    report = {label: group_mechanism(runs) for label, runs in grouped.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "mechanism.json", report)
    draw(report, grouped, out_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    """`python analysis/mechanism.py FOLDER... [--out DIR]`: writes the report, prints a summary."""
    parser = argparse.ArgumentParser(
        description="SAE's mechanism over generations: lambda per generation and expert survival"
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    out = args.out or args.folders[0] / "mechanism"
    skipped: list[str] = []
    try:
        report = run(args.folders, out, skipped)
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if skipped:
        print(f"skipped {len(skipped)} run(s) without SAE diagnostics (other methods)")
    for label, group in report.items():
        last, overall = group["generations"][-1], group["overall"]
        print(f"{label}: {group['n_runs']} run(s)")
        spreads = {"all generations": overall["lambda"], f"generation {last['generation']}": last["lambda"]}
        for name, spread in spreads.items():
            keys = ("q05", "q50", "q95", "std") if spread else ()
            quantiles = " ".join(f"{q} {spread[q]:.4f}" for q in keys) or "no ratios"
            print(f"  lambda, {name}: {quantiles}")
        width = overall["lambda_spread"]
        if width:
            print(
                f"  lambda q95 - q05 (run's mean over generations): {width['mean']:.4f} ± {width['std']:.4f}"
            )
        gap = overall["omega_gap"]
        print(f"  omega gap (mean over generations): {'n/a' if gap is None else f'{gap:.4f}'}")
        alive = ", ".join(f"{e} {share:.0%}" for e, share in last["survival"].items())
        print(f"  experts alive at generation {last['generation']}: {alive}")
    print(f"wrote {out}")
    return 0
