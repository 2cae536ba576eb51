"""Turn the run folders of a multirun into a paper-style table.

    python analysis/tables.py outputs/tables/table2_ablation [more sweep folders...] \
        [--out outputs/tables/table2_ablation/report] [--title "Table 2"]

Rows are the swept settings other than the seed (read from each run's `.hydra/overrides.yaml`);
cells are mean ± std over seeds of the test accuracy per task and their mean, plus the
evaluation budget (models scored, examples scored) and wall time. Writes `table.md`,
`table.tex`, `table.json` and a bar chart `table.png`. A folder that is not a finished run
(no `results.json`) is refused by name; runs that the sweep defined but that did not finish
are listed as missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

_PARTS = re.compile(r"(\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
SEED_KEYS = ("seed", "+seed")
METHOD_KEYS = ("method", "method.index")


class AggregationError(RuntimeError):
    pass


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) or [] if path.is_file() else []


def _key_value(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run folders of a multirun (each job's folder holds `.hydra/`)."""
    if (sweep_dir / ".hydra" / "overrides.yaml").is_file():
        return [sweep_dir]
    return sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml"))


def expected_runs(sweep_dir: Path) -> list[tuple[tuple[str, str], ...]] | None:
    """The override combinations the sweep defined (from Hydra's `multirun.yaml`)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    hydra = config.get("hydra", {})
    params = dict((hydra.get("sweeper") or {}).get("params") or {})
    for override in hydra.get("overrides", {}).get("task", []):
        key, value = _key_value(override)
        if "," in value and not value.startswith("["):
            params[key] = value
    axes = [[(key.lstrip("+~"), v.strip()) for v in str(values).split(",")] for key, values in params.items()]
    return [tuple(sorted(combo)) for combo in itertools.product(*axes)] if axes else None


def load(sweep_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """Finished runs as records, and a description of each missing run."""
    records, missing = [], []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise AggregationError(f"{sweep_dir} is not a folder")
        runs = find_runs(sweep_dir)
        if not runs:
            raise AggregationError(f"{sweep_dir} holds no run folders (no */.hydra/overrides.yaml)")
        found = set()
        for run in runs:
            results_path = run / "results.json"
            overrides = dict(_key_value(o) for o in _overrides(run))
            if not results_path.is_file():
                missing.append(f"{run}: not a finished run (no results.json): {_describe(overrides)}")
                continue
            results = json.loads(results_path.read_text())
            found.add(tuple(sorted(overrides.items())))
            records.append({"run": str(run), "overrides": overrides, "results": results})
        for combo in expected_runs(sweep_dir) or []:
            if not any(set(combo) <= set(f) for f in found) and not any(
                set(combo) <= set(dict(_key_value(o) for o in _overrides(r)).items()) for r in runs
            ):
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
    """Group by method and every other override that varies across runs, except the seed."""
    ignored = {k.lstrip("+") for k in SEED_KEYS + METHOD_KEYS} | {"experiment"}  # the sweep itself
    keys = sorted({k for r in records for k in r["overrides"]} - ignored)
    swept = [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1]
    with_method = len({method_label(r["results"]) for r in records}) > 1
    groups: dict[str, list[dict]] = defaultdict(list)
    methods: dict[str, int] = {}  # each method's first appearance: rows keep the sweeps' order
    for record in records:
        groups[row_label(record, swept, with_method)].append(record["results"])
        methods.setdefault(method_label(record["results"]), len(methods))
    order = {
        label: (methods[method_label(results[0])], natural_key(label)) for label, results in groups.items()
    }
    groups = {label: groups[label] for label in sorted(groups, key=order.__getitem__)}
    tasks = sorted({t for r in records for t in r["results"]["test"] if t != "mean"})
    rows = []
    for label, results in groups.items():
        row = {"label": label, "seeds": sorted(r["seed"] for r in results), "cells": {}}
        for column in tasks + ["mean"]:
            values = [100 * r["test"][column] for r in results]
            row["cells"][column] = (
                statistics.fmean(values),
                statistics.pstdev(values) if len(values) > 1 else 0.0,
            )
        for column in ("models_scored", "examples_scored", "wall_seconds"):
            row[column] = statistics.fmean(r[column] for r in results)
        rows.append(row)
    return tasks, rows


def _best(rows: list[dict], column: str) -> float:
    return max(r["cells"][column][0] for r in rows)


def _cells(rows: list[dict], row: dict, columns: list[str], cell: str, bold: str) -> list[str]:
    """A row's `mean ± std` cells, formatted by `cell`; the best mean of a column wrapped in `bold`."""
    texts = []
    for column in columns:
        mean, std = row["cells"][column]
        text = cell.format(mean=mean, std=std)
        texts.append(bold.format(text) if mean == _best(rows, column) else text)
    return texts


def markdown(tasks: list[str], rows: list[dict], title: str) -> str:
    columns = tasks + ["mean"]
    lines = [
        f"**{title}** (test accuracy %, mean ± std over seeds; best in bold)",
        "",
        "| setting | " + " | ".join(columns) + " | models scored | examples scored | wall s | seeds |",
        "|---|" + "---:|" * (len(columns) + 4),
    ]
    for row in rows:
        cells = _cells(rows, row, columns, "{mean:.1f} ± {std:.1f}", "**{}**")
        lines.append(
            f"| {row['label']} | "
            + " | ".join(cells)
            + f" | {row['models_scored']:.0f} | {row['examples_scored']:.0f}"
            + f" | {row['wall_seconds']:.0f} | {len(row['seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def latex(tasks: list[str], rows: list[dict], title: str) -> str:
    columns = tasks + ["mean"]

    def esc(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * (len(columns) + 2) + "}",
        r"\toprule",
        "Setting & " + " & ".join(esc(c) for c in columns) + r" & Models scored & Seeds \\",
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
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{esc(title)}}}", r"\end{table}"]
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
        means = [r["cells"][column][0] for r in rows]
        stds = [r["cells"][column][1] for r in rows]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=column)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun folders (or single run folders)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <first sweep>/report)"
    )
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--allow-missing", action="store_true", help="write the table even if runs are missing"
    )
    args = parser.parse_args(argv)
    try:
        records, missing = load(args.sweeps)
    except AggregationError as error:
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
    tasks, rows = aggregate(records)
    title = args.title or args.sweeps[0].name
    out = args.out or args.sweeps[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(tasks, rows, title))
    (out / "table.tex").write_text(latex(tasks, rows, title))
    (out / "table.json").write_text(json.dumps({"tasks": tasks, "rows": rows, "missing": missing}, indent=2))
    bar_chart(tasks, rows, title, out / "table.png")
    print(markdown(tasks, rows, title))
    print(f"written to {out}/table.{{md,tex,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
