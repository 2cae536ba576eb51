"""Reproduce the paper's tables: run each table's multirun(s), then aggregate them.

    python experiments/reproduce.py table2                 # one table at lab scale
    python experiments/reproduce.py all                    # all six tables, 3 seeds each
    python experiments/reproduce.py table1 --scale paper   # paper scale (GPUs, SLURM)
    python experiments/reproduce.py table1 --aggregate-only [--out DIR]   # reports from finished runs
    python experiments/reproduce.py table2 -- seed=0,1,2,3,4   # extra Hydra overrides

Each table is one or more `experiment=` configs (conf/experiment/), run at `scale=lab` or
`scale=paper` (conf/scale/); runs land in fixed folders under outputs/tables/ (paper scale:
outputs/tables/paper/), so re-running a table skips runs that already finished and completes
the others. The report (Markdown, LaTeX, JSON, bar chart) goes to outputs/tables/<table>/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "table1": ("Table 1: merging methods (lab)", ["table1_experts", "table1_main"]),
    "table2": ("Table 2: SAE ablation", ["table2_ablation"]),
    "table3": (
        "Table 3: archive size (SAE) and swarm size (PSO)",
        ["table3_archive_sae", "table3_archive_pso"],
    ),
    "table4": ("Table 4: sparsity-rate range", ["table4_range"]),
    "table5": ("Table 5: sparsity measure", ["table5_measure"]),
    "table6": ("Table 6: cyclic schedule at s_min=0.05, s_max=0.9", ["table6_schedule"]),
}


def run_table(
    name: str, scale: str, overrides: list[str], aggregate_only: bool, out_dir: Path | None = None
) -> dict:
    title, experiments = TABLES[name]
    prefix = "paper/" if scale == "paper" else ""  # where conf/scale/<scale>.yaml puts the sweeps
    started = time.perf_counter()
    if not aggregate_only:
        for experiment in experiments:
            command = [
                sys.executable,
                "run.py",
                "-m",
                f"experiment={experiment}",
                f"scale={scale}",
                *overrides,
            ]
            print("$", " ".join(command[1:]), flush=True)
            if code := subprocess.run(command, cwd=ROOT).returncode:  # the sweep listed its jobs
                raise SystemExit(f"{experiment}: exit status {code} (see the sweep's summary above)")
    seconds = time.perf_counter() - started
    sweeps = [ROOT / "outputs" / "tables" / f"{prefix}{e}" for e in experiments]
    if aggregate_only:  # aggregate what was run; say what was not
        missing = [s for s in sweeps if not s.is_dir()]
        for sweep in missing:
            print(f"note: {sweep} does not exist (not run yet): left out of the report", flush=True)
        sweeps = [s for s in sweeps if s.is_dir()]
        if not sweeps:
            raise SystemExit(
                f"{name}: no finished sweep to aggregate under {ROOT / 'outputs' / 'tables'}; "
                f"run it first: python experiments/reproduce.py {name}"
            )
    out = out_dir / f"{prefix}{name}" if out_dir else ROOT / "outputs" / "tables" / f"{prefix}{name}"
    args = [str(s) for s in sweeps] + ["--out", str(out), "--title", title]
    code = subprocess.run([sys.executable, str(ROOT / "analysis" / "tables.py"), *args], cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"aggregation of {name} failed (see above)")
    if not aggregate_only:
        (out / "timing.json").write_text(
            json.dumps({"table": name, "scale": scale, "seconds": round(seconds)})
        )
    return {"table": name, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", choices=[*TABLES, "all"])
    parser.add_argument("--scale", choices=["lab", "paper"], default="lab")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the reports")
    parser.add_argument("--out", type=Path, help="where the reports go (default: outputs/tables/)")
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    names = list(TABLES) if "all" in args.tables else args.tables
    timings = [run_table(n, args.scale, overrides, args.aggregate_only, args.out) for n in names]
    for timing in timings:
        print(f"{timing['table']}: {timing['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
