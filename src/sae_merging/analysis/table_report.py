"""Turn the run folders of a multirun into a paper-style table.

    python analysis/tables.py outputs/tables/table2_ablation [more sweep folders...] \
        [--out outputs/tables/table2_ablation/report] [--title "Table 2"] [--by lab]

Rows are the swept settings other than the seed: which keys a run overrode comes from its
`.hydra/overrides.yaml`, their values from the config the run saved (`.hydra/config.yaml`, and
`.hydra/hydra.yaml` for config-group choices such as `scorer=magnitude`);
cells are the test accuracy per task and their mean over seeds: mean ± sample std (n - 1), the
number of seeds n and the 95% t-interval, plus the evaluation budget (models scored, examples
scored) and wall time. Below them, paired differences: the reference row (`--reference`;
default the row `sae`, else the first SAE row) minus every other row that shares >= 2 seeds
with it, paired by seed and by test item (each run's `test_items.jsonl`), with a 95% paired
bootstrap CI over seeds and items and its p-value (`sae_merging.analysis.stats`);
`--reference` given twice or more gives one such block per reference (a pair already shown
the other way round is not repeated). `--mechanism` adds SAE's mechanism per row, from the
runs' `metrics.jsonl` (`sae_merging.analysis.mechanism_report`): lambda's spread (each run's mean
per-generation q95 - q05 and std, mean ± std over runs), the mean omega gap, the share of runs
keeping each dense expert at the last generation and the mean last generation it was in
(rows of other methods: "–"). Lab runs of one build get that build's reference rows below the
table (base, each expert, the average, task arithmetic, the multi-task ceiling: `lab_references`),
so the room the methods had is in view. Writes
`table.md`, `table.tex`, `table.json`, a bar chart `table.png` (means with 95% CIs) and, with
paired differences, `paired.png` (the mean column's differences and CIs per reference). A
folder that is not a finished run (no `results.json`) is refused by name; runs that the sweep
defined but that did not finish are listed as missing. `--by KEY` (e.g. `--by lab` for the
cross-regime table) writes one such table per value of that override, in its own folder
(`<out>/KEY=value/`), each with its own paired differences and lab references, and above them
a summary putting each row's mean, each build's reference rows and each paired difference
side by side per value (`table.md`, `table.json`, `panels.png`: means with CIs and the builds'
better expert, task arithmetic and multi-task ceiling as lines).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sae_merging.analysis.run_folders import (
    SEED_KEYS,
    TEST_ITEMS_FILE,
    RunFolderError,
    expected_runs,
    find_runs,
    overrides,
    read_results,
    read_test_items,
    settings,
)
from sae_merging.analysis.stats import paired_bootstrap, paired_t, summary
from sae_merging.lab.spec import LabSpec
from sae_merging.tasks.base import mean_percent

_PARTS = re.compile(r"(\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
METHOD_KEYS = ("method", "method.index")
MIN_PAIRED_SEEDS = 2


class AggregationError(RunFolderError):
    """Runs that make no table (a missing reference row, no runs)."""


def load(sweep_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """Finished runs as records, and a description of each missing run."""
    records, missing = [], []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise AggregationError(f"{sweep_dir} is not a folder")
        runs = find_runs(sweep_dir)
        if not runs:
            raise AggregationError(f"{sweep_dir} holds no run folders (no */.hydra/overrides.yaml)")
        started = [set(overrides(run).items()) for run in runs]
        for run in runs:
            results = read_results(run)
            if results is None:
                missing.append(f"{run}: not a finished run (no results.json): {_describe(overrides(run))}")
                continue
            record = {"run": str(run), "overrides": settings(run), "results": results}
            records.append({**record, "items": read_test_items(run)})
        for combo in expected_runs(sweep_dir) or []:
            if not any(set(combo) <= run for run in started):
                missing.append(f"{sweep_dir}: never started: {_describe(dict(combo))}")
    return records, missing


def _describe(overrides: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "(no overrides)"


def method_label(results: dict) -> str:
    expert = (results.get("details") or {}).get("expert")
    return f"{results['method']}:{expert}" if expert else results["method"]


def natural_key(label: str) -> list:
    """Sort key reading numbers as numbers (archive_size=4 before archive_size=10)."""
    return [
        (0, float(part), "") if _NUMBER.fullmatch(part) else (1, 0.0, part) for part in _PARTS.split(label)
    ]


def row_label(record: dict, swept: list[str], with_method: bool) -> str:
    parts = [method_label(record["results"])] if with_method else []
    parts += [f"{k}={record['overrides'][k]}" for k in swept if k in record["overrides"]]
    return ", ".join(parts) or "default"


def aggregate(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Group by method and every other override that varies across runs, except the seed.
    Each row keeps its runs (`records`) for the paired differences."""
    ignored = {k.lstrip("+") for k in SEED_KEYS + METHOD_KEYS} | {"experiment"}  # the sweep itself
    keys = sorted({k for r in records for k in r["overrides"]} - ignored)
    swept = [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1]
    with_method = len({method_label(r["results"]) for r in records}) > 1
    groups: dict[str, list[dict]] = defaultdict(list)
    methods: dict[str, int] = {}  # each method's first appearance: rows keep the sweeps' order
    for record in records:
        groups[row_label(record, swept, with_method)].append(record)
        methods.setdefault(method_label(record["results"]), len(methods))
    order = {
        label: (methods[method_label(group[0]["results"])], natural_key(label))
        for label, group in groups.items()
    }
    groups = {label: groups[label] for label in sorted(groups, key=order.__getitem__)}
    tasks = sorted({t for r in records for t in r["results"]["test"] if t != "mean"})
    rows = []
    for label, group in groups.items():
        results = [r["results"] for r in group]
        row = {
            "label": label,
            "method": method_label(results[0]),
            "seeds": sorted(r["seed"] for r in results),
            "cells": {},
            "records": group,
        }
        for column in tasks + ["mean"]:
            cell = summary([100 * r["test"][column] for r in results])
            row["cells"][column] = {
                "mean": cell.mean,
                "std": cell.std,
                "n": cell.n,
                "ci_low": cell.ci_low,
                "ci_high": cell.ci_high,
            }
        for column in ("models_scored", "examples_scored", "wall_seconds"):
            row[column] = statistics.fmean(r[column] for r in results)
        row["chosen"] = chosen_origins(results)
        rows.append(row)
    return tasks, rows


def chosen_origins(results: list[dict]) -> dict[str, int]:
    """How many runs chose a model of each origin (a child, an expert, a pruned variant, a
    particle...; `results.json`'s `chosen.origin`, a particle's or grid point's index dropped),
    most frequent first: whether a search's pick is a merge or a copy of an expert."""
    counts: dict[str, int] = defaultdict(int)
    for result in results:
        origin = (result.get("chosen") or {}).get("origin")
        if origin is not None:
            counts[re.sub(r":\d+$", "", origin)] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def reference_row(rows: list[dict], label: str | None = None) -> dict | None:
    """The row the paired differences start from: `label`, else the row `sae`, else the first
    row of method sae (None when the table has no SAE row)."""
    if label is not None:
        for row in rows:
            if row["label"] == label:
                return row
        raise AggregationError(f"--reference {label!r} is no row; rows: {[r['label'] for r in rows]}")
    for row in rows:
        if row["label"] == "sae":
            return row
    return next((row for row in rows if row["method"] == "sae"), None)


def _correctness(row: dict, seeds: list[int], task: str, uids: list[str]) -> np.ndarray:
    by_seed = {r["results"]["seed"]: r["items"] for r in row["records"]}
    return np.array([[by_seed[s][task][u] for u in uids] for s in seeds], dtype=float)


def paired_blocks(tasks: list[str], rows: list[dict], references: list[dict]) -> list[dict]:
    """`paired_rows` for each reference in turn, without a pair the block of an earlier
    reference already holds (the same two rows the other way round)."""
    entries, seen = [], set()
    for reference in references:
        shown = {other for first, other in seen if first == reference["label"]}
        for entry in paired_rows(tasks, rows, reference, skip=shown):
            entries.append(entry)
            seen.add((entry["other"], entry["reference"]))
    return entries


def paired_rows(
    tasks: list[str], rows: list[dict], reference: dict | None, skip: set[str] | None = None
) -> list[dict]:
    """Reference minus each other row, paired by seed and test item, per task and for the mean
    (in accuracy points). A row without per-item results or with < 2 shared seeds is listed
    with the reason instead of numbers."""
    if reference is None:
        return []
    paired = []
    for row in rows:
        if row is reference or row["label"] in (skip or ()):
            continue
        entry = {
            "label": f"{reference['label']} − {row['label']}",
            "reference": reference["label"],
            "other": row["label"],
        }
        seeds = sorted(set(reference["seeds"]) & set(row["seeds"]))
        runs = [r for r in reference["records"] + row["records"] if r["results"]["seed"] in seeds]
        if len(seeds) < MIN_PAIRED_SEEDS:
            entry["skipped"] = f"{len(seeds)} shared seed(s); pairing needs >= {MIN_PAIRED_SEEDS}"
        elif any(r["items"] is None for r in runs):
            entry["skipped"] = f"no {TEST_ITEMS_FILE} in some runs (finished before per-item results)"
        else:
            uids = {}
            for task in tasks:
                shared = set.intersection(*(set(r["items"].get(task, {})) for r in runs))
                uids[task] = sorted(shared)
            a = {t: _correctness(reference, seeds, t, uids[t]) for t in tasks if uids[t]}
            b = {t: _correctness(row, seeds, t, uids[t]) for t in tasks if uids[t]}
            entry["columns"] = {}
            for column, keys in [*((t, [t]) for t in a), ("mean", list(a))]:
                result = paired_bootstrap({k: a[k] for k in keys}, {k: b[k] for k in keys})
                per_seed = np.mean([a[k].mean(axis=1) - b[k].mean(axis=1) for k in keys], axis=0)
                seed_t, seed_p = paired_t(100 * per_seed)
                entry["columns"][column] = {
                    "diff": 100 * result.diff,
                    "ci_low": 100 * result.ci_low,
                    "ci_high": 100 * result.ci_high,
                    "half_width": 100 * result.half_width,
                    "p": result.p,
                    "n_seeds": result.n_seeds,
                    "n_items": result.n_items,
                    "seed_t": {
                        "ci_low": seed_t.ci_low,
                        "ci_high": seed_t.ci_high,
                        "std": seed_t.std,
                        "p": seed_p,
                    },
                }
        paired.append(entry)
    return paired


def mechanism_cells(rows: list[dict]) -> None:
    """Each row's SAE mechanism (`row["mechanism"]`, None for runs without diagnostics), from
    its runs' metrics.jsonl."""
    from sae_merging.analysis.mechanism_report import MechanismError, group_mechanism, run_mechanism
    from sae_merging.analysis.run_folders import read_metrics

    for row in rows:
        runs = {}
        for record in row["records"]:
            try:
                runs[record["run"]] = run_mechanism(read_metrics(Path(record["run"])))
            except (MechanismError, OSError):
                runs = {}
                break
        if not runs:
            row["mechanism"] = None
            continue
        grouped = group_mechanism(runs)
        row["mechanism"] = grouped["overall"]
        row["mechanism"]["last_seen"] = {Path(run).name: seen for run, seen in grouped["last_seen"].items()}


def _mechanism_markdown(rows: list[dict]) -> list[str]:
    experts = sorted({e for r in rows if r.get("mechanism") for e in r["mechanism"]["experts_kept"]})
    lines = [
        "",
        "SAE's mechanism per row (runs' metrics.jsonl, generations every run of the row reached): "
        "lambda q95 − q05 and lambda std are each run's mean over its child-making generations, "
        "mean ± sample std over runs; omega gap: mean |omega_A − omega_B| over pairs and generations; "
        "per dense expert: share of runs keeping it at the last generation, "
        "(mean last generation it was in):",
        "",
        "| setting | lambda q95 − q05 | lambda std | omega gap | last gen. | "
        + " | ".join(experts)
        + " | n |",
        "|---|" + "---:|" * (len(experts) + 5),
    ]
    for row in rows:
        m = row.get("mechanism")
        if not m or not m["lambda_spread"]:
            lines.append(f"| {row['label']} | " + " | ".join("–" for _ in range(len(experts) + 4)) + " | |")
            continue
        spread, std = m["lambda_spread"], m["lambda_std"]
        kept = [f"{m['experts_kept'][e]:.0%} ({m['last_seen_mean'][e]:.1f})" for e in experts]
        cells = [
            f"{spread['mean']:.4f} ± {spread['std']:.4f}",
            f"{std['mean']:.4f} ± {std['std']:.4f}",
            f"{m['omega_gap']:.4f}",
            str(m["last_generation"]),
            *kept,
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {spread['n']} |")
    return lines


def _best(rows: list[dict], column: str) -> float:
    return max(r["cells"][column]["mean"] for r in rows)


def _cells(rows: list[dict], row: dict, columns: list[str], cell: str, bold: str) -> list[str]:
    """A row's cells (mean, std, ci_low, ci_high formatted by `cell`; one seed: its value and
    n = 1, no spread or interval to show); the best mean of a column wrapped in `bold`."""
    texts = []
    for column in columns:
        values = row["cells"][column]
        text = f"{values['mean']:.1f} (n = 1)" if values.get("n") == 1 else cell.format(**values)
        texts.append(bold.format(text) if values["mean"] == _best(rows, column) else text)
    return texts


def _paired_cell(values: dict, template: str) -> str:
    """A paired row's cell; p below 0.001 is written as such (the bootstrap's floor is
    2 / (replicates + 1), not 0)."""
    p = values["p"]
    return template.format(**{**values, "p": "<0.001" if p < 0.001 else f"={p:.3f}"})


PAIRED_NOTE = (
    "paired differences in accuracy points, {reference} minus each row, by seed and test item: "
    "diff [95% CI] and p from a paired bootstrap over seeds and items (10,000 replicates); last "
    "columns: the mean column's 95% t-interval and p of a paired t-test over the per-seed "
    "differences; a CI containing 0 is no detectable difference"
)


REFERENCE_ROWS = ("base", "math", "multilingual", "average", "task_arithmetic", "multitask")


def lab_references(records: list[dict]) -> dict | None:
    """The reference rows of the lab build the runs were scored in (its build.json): base, each
    expert, the 50/50 average, task arithmetic at its validation lambda and the multi-task
    ceiling, so a table shows the room its methods had. None unless every run is a lab run of
    one build that is on disk (a cached build's path: `lab.cache_dir`, its name and key)."""
    found = set()
    for record in records:
        config = Path(record["run"]) / ".hydra" / "config.yaml"
        lab = OmegaConf.load(config).get("lab") if config.is_file() else None
        if lab is None:
            return None
        data = OmegaConf.to_container(lab, resolve=True)
        spec = LabSpec.from_dict(data)
        found.add(Path(data["cache_dir"]).expanduser() / f"{spec.name}-{spec.key()}" / "build.json")
    if len(found) != 1 or not (path := found.pop()).is_file():
        return None
    build = json.loads(path.read_text())
    if "test_accuracy" not in build:
        return None
    return {
        "build": str(path),
        **{k: build.get(k) for k in ("test_accuracy", "normalized_gain", "task_arithmetic")},
    }


def _references_markdown(tasks: list[str], references: dict) -> list[str]:
    accuracy, gain = references["test_accuracy"], references.get("normalized_gain") or {}
    lam = (references.get("task_arithmetic") or {}).get("lambda")
    lines = [
        "",
        "Reference rows of the lab build the runs used (one build, the same test items; kept = "
        "(model − base) / (that task's expert − base)): `" + references["build"] + "`",
        "",
        "| reference | " + " | ".join(tasks) + " | mean | kept (" + " / ".join(tasks) + ") |",
        "|---|" + "---:|" * (len(tasks) + 1) + "---|",
    ]
    for name in [n for n in REFERENCE_ROWS if n in accuracy]:
        values = [100 * accuracy[name][t] for t in tasks]
        kept = " / ".join("–" if (g := gain.get(name, {}).get(t)) is None else f"{g:.2f}" for t in tasks)
        label = f"task_arithmetic (lambda {lam:g})" if name == "task_arithmetic" and lam is not None else name
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {label} | {cells} | {mean_percent(accuracy[name]):.1f} | {kept} |")
    return lines


def markdown(
    tasks: list[str],
    rows: list[dict],
    title: str,
    paired: list[dict] | None = None,
    references: dict | None = None,
) -> str:
    columns = tasks + ["mean"]
    lines = [
        f"**{title}** (test accuracy %: mean ± sample std over n seeds, [95% t-interval]; best mean in bold)",
        "",
        "| setting | "
        + " | ".join(columns)
        + " | n | models scored | examples scored | wall s | chosen (runs) |",
        "|---|" + "---:|" * (len(columns) + 4) + "---|",
    ]
    for row in rows:
        cells = _cells(rows, row, columns, "{mean:.1f} ± {std:.1f} [{ci_low:.1f}, {ci_high:.1f}]", "**{}**")
        lines.append(
            f"| {row['label']} | "
            + " | ".join(cells)
            + f" | {len(row['seeds'])} | {row['models_scored']:.0f} | {row['examples_scored']:.0f}"
            + f" | {row['wall_seconds']:.0f} | "
            + (", ".join(f"{origin} {n}" for origin, n in row["chosen"].items()) or "–")
            + " |"
        )
    if references is not None:
        lines += _references_markdown(tasks, references)
    if any("mechanism" in row for row in rows):
        lines += _mechanism_markdown(rows)
    blocks: dict[str, list[dict]] = {}
    for entry in paired or []:
        blocks.setdefault(entry["reference"], []).append(entry)
    for reference, block in blocks.items():
        lines += ["", PAIRED_NOTE.format(reference=reference) + ":", ""]
        lines += [
            "| difference | " + " | ".join(columns) + " | mean: paired t over seeds | n seeds |",
            "|---|" + "---:|" * (len(columns) + 2),
        ]
        for entry in block:
            if "columns" not in entry:
                dashes = " | ".join("–" for _ in range(len(columns) + 1))
                lines.append(f"| {entry['label']} | {dashes} | {entry['skipped']} |")
                continue
            cells = [
                _paired_cell(entry["columns"][c], "{diff:+.1f} [{ci_low:+.1f}, {ci_high:+.1f}] p{p}")
                if c in entry["columns"]
                else "–"
                for c in columns
            ]
            mean = entry["columns"]["mean"]
            cells.append(
                _paired_cell({"diff": mean["diff"], **mean["seed_t"]}, "[{ci_low:+.1f}, {ci_high:+.1f}] p{p}")
            )
            lines.append(f"| {entry['label']} | " + " | ".join(cells) + f" | {mean['n_seeds']} |")
    return "\n".join(lines) + "\n"


def latex(tasks: list[str], rows: list[dict], title: str, paired: list[dict] | None = None) -> str:
    columns = tasks + ["mean"]

    def esc(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * (len(columns) + 2) + "}",
        r"\toprule",
        "Setting & " + " & ".join(esc(c) for c in columns) + r" & Models scored & $n$ \\",
        r"\midrule",
    ]
    for row in rows:
        cells = _cells(rows, row, columns, "{mean:.1f} $\\pm$ {std:.1f}", "\\textbf{{{}}}")
        lines.append(
            esc(row["label"])
            + " & "
            + " & ".join(cells)
            + f" & {row['models_scored']:.0f} & {len(row['seeds'])} \\\\"
        )
    compared = [entry for entry in paired or [] if "columns" in entry]
    if compared:
        lines.append(r"\midrule")
        for entry in compared:
            cells = [
                _paired_cell(entry["columns"][c], "{diff:+.1f} [{ci_low:+.1f}, {ci_high:+.1f}]")
                if c in entry["columns"]
                else "--"
                for c in columns
            ]
            n = entry["columns"]["mean"]["n_seeds"]
            lines.append(
                esc(entry["label"]).replace("−", "$-$") + " & " + " & ".join(cells) + f" & & {n} \\\\"
            )
    caption = esc(title) + ": mean $\\pm$ sample std over $n$ seeds"
    if compared:
        caption += "; below the rule, paired differences [95\\% bootstrap CI over seeds and test items]"
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def bar_chart(tasks: list[str], rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = tasks + ["mean"]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4))
    for i, column in enumerate(columns):
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(rows))]
        cells = [r["cells"][column] for r in rows]
        means = [c["mean"] for c in cells]
        errors = [[c["mean"] - c["ci_low"] for c in cells], [c["ci_high"] - c["mean"] for c in cells]]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=column)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r['label']} (n={len(r['seeds'])})" for r in rows], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\nmean and 95% CI over n seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def paired_chart(paired: list[dict], path: Path) -> bool:
    """The mean column's paired differences with their 95% CIs, one panel per reference
    (False, nothing drawn, when no pair has numbers)."""
    blocks: dict[str, list[dict]] = {}
    for entry in paired:
        if "columns" in entry:
            blocks.setdefault(entry["reference"], []).append(entry)
    if not blocks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.35 * max(len(b) for b in blocks.values()) + 1.5
    fig, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), height), squeeze=False)
    for ax, (reference, block) in zip(axes[0], blocks.items(), strict=True):
        ys = range(len(block))
        for y, entry in zip(ys, block, strict=True):
            c = entry["columns"]["mean"]
            color = "C3" if c["ci_low"] > 0 or c["ci_high"] < 0 else "C0"
            error = [[c["diff"] - c["ci_low"]], [c["ci_high"] - c["diff"]]]
            ax.errorbar([c["diff"]], [y], xerr=error, fmt="o", color=color, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(list(ys), [entry["other"] for entry in block], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{reference} minus row, mean accuracy (points)", fontsize=8)
        ax.set_title(f"paired vs {reference}\n95% CI (red: excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def panel_values(sweep_dirs: list[Path], records: list[dict], key: str) -> list[str]:
    """The values of `key` the runs have, in the order the first sweep that swept it declared
    them (its `multirun.yaml`), then the rest in natural order."""
    have = {r["overrides"].get(key) for r in records} - {None}
    if not have:
        raise AggregationError(f"--by {key}: no run overrides {key!r}")
    if missing := [r["run"] for r in records if key not in r["overrides"]]:
        raise AggregationError(f"--by {key}: {len(missing)} run(s) do not override it, e.g. {missing[0]}")
    declared = []
    for sweep_dir in sweep_dirs:
        for combo in expected_runs(sweep_dir) or []:
            declared += [value for k, value in combo if k.lstrip("+") == key and value not in declared]
    return [v for v in declared if v in have] + sorted(have - set(declared), key=natural_key)


def build_table(records: list[dict], labels: list[str | None], mechanism: bool) -> dict:
    """One table of `records`: its tasks, rows, paired blocks against each reference label
    (None: the default reference) and the lab build's reference rows."""
    tasks, rows = aggregate(records)
    references = [reference_row(rows, label) for label in labels]
    paired = paired_blocks(tasks, rows, [r for r in references if r is not None])
    if mechanism:
        mechanism_cells(rows)
    return {"tasks": tasks, "rows": rows, "paired": paired, "references": lab_references(records)}


def _panel_title(key: str, value: str) -> str:
    return f"{key}={value}"


def _row_cell(table: dict, label: str) -> str | None:
    row = next((r for r in table["rows"] if r["label"] == label), None)
    if row is None:
        return None
    mean = row["cells"]["mean"]
    text = "{mean:.1f} ± {std:.1f} [{ci_low:.1f}, {ci_high:.1f}] n={n}".format(**mean)
    return f"**{text}**" if mean["mean"] == _best(table["rows"], "mean") else text


def _reference_cell(table: dict, name: str) -> str | None:
    build = table["references"] or {}
    accuracy = build.get("test_accuracy", {}).get(name)
    if accuracy is None:
        return None
    kept = (build.get("normalized_gain") or {}).get(name, {})
    gains = " / ".join(f"{kept[t]:.2f}" for t in table["tasks"] if t in kept)
    return f"{mean_percent(accuracy):.1f} (kept {gains})"


def _paired_summary_cell(table: dict, label: str) -> str | None:
    entry = next((e for e in table["paired"] if e["label"] == label and "columns" in e), None)
    if entry is None:
        return None
    mean = entry["columns"]["mean"]
    return _paired_cell(mean, "{diff:+.1f} [{ci_low:+.1f}, {ci_high:+.1f}] p{p}") + f" n={mean['n_seeds']}"


def panels_markdown(key: str, panels: dict[str, dict], title: str) -> str:
    """The panels side by side: each row's mean column per panel, the lab builds' reference
    means per panel, and each paired difference's mean column per panel."""
    head = (
        "| {} | "
        + " | ".join(_panel_title(key, name) for name in panels)
        + " |\n|---|"
        + "---:|" * len(panels)
    )

    def block(first: str, labels: list[str], cell) -> list[str]:
        lines = [head.format(first)]
        for label in labels:
            cells = [cell(table, label) or "–" for table in panels.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    tables = panels.values()
    labels = list(dict.fromkeys(row["label"] for table in tables for row in table["rows"]))
    lines = [
        f"**{title}** (mean test accuracy over the tasks, %: mean ± sample std [95% t-interval], "
        f"n seeds; one column per {key}, full tables below)",
        "",
        *block("setting", labels, _row_cell),
    ]
    if any(table["references"] for table in tables):
        tasks = " / ".join(dict.fromkeys(t for table in tables for t in table["tasks"]))
        lines += ["", f"The lab builds' reference rows (mean over the tasks, %; kept gain: {tasks}):", ""]
        lines += block("reference", list(REFERENCE_ROWS), _reference_cell)
    pairs = list(dict.fromkeys(e["label"] for table in tables for e in table["paired"] if "columns" in e))
    if pairs:
        lines += [
            "",
            f"Paired differences of the mean column per {key} (accuracy points, by seed and test "
            "item; diff [95% paired bootstrap CI] p; a CI containing 0 is no detectable difference):",
            "",
            *block("difference", pairs, _paired_summary_cell),
        ]
    return "\n".join(lines) + "\n"


def panels_chart(key: str, panels: dict[str, dict], path: Path) -> None:
    """One panel per value of `key`: each row's mean accuracy with its 95% CI, and the lab
    build's better expert, task arithmetic and multi-task ceiling as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["label"] for table in panels.values() for row in table["rows"]))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 0.3 * len(labels) + 2.2), sharey=True, squeeze=False
    )
    lines = {
        "better expert": ("math", "multilingual"),
        "task_arithmetic": ("task_arithmetic",),
        "multitask": ("multitask",),
    }
    for ax, (name, table) in zip(axes[0], panels.items(), strict=True):
        for y, label in enumerate(labels):
            row = next((r for r in table["rows"] if r["label"] == label), None)
            if row is None:
                continue
            c = row["cells"]["mean"]
            error = [[c["mean"] - c["ci_low"]], [c["ci_high"] - c["mean"]]]
            ax.errorbar([c["mean"]], [y], xerr=error, fmt="o", color="C0", capsize=3)
        accuracy = (table["references"] or {}).get("test_accuracy", {})
        for i, (line, names) in enumerate(lines.items()):
            means = [mean_percent(accuracy[n]) for n in names if n in accuracy]
            if means:
                ax.axvline(max(means), color=f"C{i + 1}", ls="--", lw=1, label=f"build: {line}")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(_panel_title(key, name), fontsize=9)
        ax.set_xlabel("mean test accuracy (%), 95% CI", fontsize=8)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=len(handles), fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _write_table(out: Path, table: dict, title: str, missing: list[str]) -> str:
    tasks, rows, paired = table["tasks"], table["rows"], table["paired"]
    text = markdown(tasks, rows, title, paired, table["references"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "table.tex").write_text(latex(tasks, rows, title, paired))
    saved = [{k: v for k, v in row.items() if k != "records"} for row in rows]
    payload = {"tasks": tasks, "rows": saved, "paired": paired, "missing": missing}
    (out / "table.json").write_text(json.dumps({**payload, "references": table["references"]}, indent=2))
    bar_chart(tasks, rows, title, out / "table.png")
    if not paired_chart(paired, out / "paired.png"):
        (out / "paired.png").unlink(missing_ok=True)  # (a stale chart of an earlier report)
    return text


def _written(out: Path) -> str:
    """What a report folder holds, as the closing line says it."""
    chart = " and paired.png" if (out / "paired.png").is_file() else " (no paired.png: no pair has numbers)"
    return f"written to {out}/table.{{md,tex,json,png}}{chart}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun folders (or single run folders)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <first sweep>/report)"
    )
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        help="row the paired differences start from (default: sae); repeat for one block per row",
    )
    parser.add_argument(
        "--mechanism", action="store_true", help="add SAE's mechanism per row (lambda spread, experts kept)"
    )
    parser.add_argument(
        "--by",
        default=None,
        metavar="KEY",
        help="one table per value of this override (e.g. lab), and a summary of them side by side",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="write the table even if runs are missing"
    )
    args = parser.parse_args(argv)
    try:
        records, missing = load(args.sweeps)
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in missing:
        print(f"missing: {line}", file=sys.stderr)
    if missing and not args.allow_missing:
        print(f"error: {len(missing)} run(s) missing; finish them or pass --allow-missing", file=sys.stderr)
        return 2
    if not records:
        print("error: no finished runs", file=sys.stderr)
        return 2
    title = args.title or args.sweeps[0].name
    out = args.out or args.sweeps[0] / "report"
    labels = args.reference or [None]
    try:
        if args.by is None:
            text = _write_table(out, build_table(records, labels, args.mechanism), title, missing)
            print(text)
            print(_written(out))
            return 0
        values = panel_values(args.sweeps, records, args.by)
        panels = {
            value: build_table(
                [r for r in records if r["overrides"].get(args.by) == value], labels, args.mechanism
            )
            for value in values
        }
    except AggregationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    texts = [panels_markdown(args.by, panels, title)]
    for value, table in panels.items():
        panel_title = f"{title}, {_panel_title(args.by, value)}"
        texts.append(_write_table(out / _panel_title(args.by, value), table, panel_title, missing))
    text = "\n".join(texts)
    (out / "table.md").write_text(text)
    summary_json = {
        "by": args.by,
        "panels": {
            value: {
                "rows": [{k: v for k, v in row.items() if k != "records"} for row in table["rows"]],
                "paired": table["paired"],
                "references": table["references"],
            }
            for value, table in panels.items()
        },
        "missing": missing,
    }
    (out / "table.json").write_text(json.dumps(summary_json, indent=2))
    panels_chart(args.by, panels, out / "panels.png")
    print(text)
    print(f"written to {out}/table.{{md,json}}, panels.png, and one folder per {args.by} value")
    return 0


if __name__ == "__main__":
    sys.exit(main())
