"""Which selection rule picks the better model? Every rule, replayed on the same finished searches.

    python experiments/selection_study.py outputs/tables/table1_main [--methods sae,pso,m2n2,sae_dense]

For each finished run of a search method, the saved search (checkpoint state and fitness cache)
is reloaded and every rule of `selection=` picks from the same final candidates: the search
does not depend on the rule (the validation split is held out of the draws whatever the rule),
so this is what each rule would have chosen in that very run. The picks are then scored on
the test set. This is an audit of the rules, made once to choose the default; no run's choice
ever sees test data. Writes `selection_study.json` next to the sweep (or `--out`) and prints,
per rule, the test mean of its picks and its difference to `validation` (mean over runs with a
95% t-interval, `sae_merging.analysis.stats.summary`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from sae_merging.analysis.run_folders import find_runs, read_results
from sae_merging.analysis.stats import summary
from sae_merging.runtime import runner
from sae_merging.runtime.loop import CHECKPOINT_FILE, choose
from sae_merging.runtime.selection import SELECTIONS
from sae_merging.utils.files import atomic_write_json


def replay(run: Path) -> dict:
    """Each rule's pick in one finished run, with its objective and test accuracy."""
    results = read_results(run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.progress = False
    method, ctx, tokenizer = runner.prepare(cfg, run)
    saved = json.loads((run / "checkpoint" / CHECKPOINT_FILE).read_text())
    state = method.state_type.from_json(saved["state"])
    ctx.fitness.restore(saved["fitness"])
    picks, tested = {}, {results["chosen"]["ident"]: results["test"]}
    for rule in SELECTIONS:
        ctx.selection = rule
        outcome = choose(method, ctx, state)
        ident = outcome.member.ident
        if ident not in tested:
            tensors = ctx.store.load(ident)
            test, _, _ = runner.test_scores(ctx, ident, tensors, ctx.fitness.evaluator, tokenizer)
            tested[ident] = {**test, "mean": sum(test.values()) / len(test)}
        picks[rule] = {"ident": ident, "objective": outcome.opt_scores.mean, "test": tested[ident]}
    return {"run": str(run), "method": results["method"], "seed": results["seed"], "picks": picks}


def report(rows: list[dict]) -> str:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    lines = [
        "| method | rule | test mean % (± std) | minus validation [95% CI] | same pick | runs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, runs in by_method.items():
        for rule in SELECTIONS:
            tests = [100 * r["picks"][rule]["test"]["mean"] for r in runs]
            diffs = [t - 100 * r["picks"]["validation"]["test"]["mean"] for t, r in zip(tests, runs)]
            same = sum(r["picks"][rule]["ident"] == r["picks"]["validation"]["ident"] for r in runs)
            s, d = summary(tests), summary(diffs)
            lines.append(
                f"| {method} | {rule} | {s.mean:.2f} ± {s.std:.2f} | {d.mean:+.2f} [{d.ci_low:+.2f}, "
                f"{d.ci_high:+.2f}] | {same}/{len(runs)} | {len(runs)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--methods", default="sae,pso,m2n2,sae_dense")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    methods = set(args.methods.split(","))
    rows = []
    for sweep in args.sweeps:
        for run in find_runs(sweep):
            results = read_results(run)
            if results is not None and results["method"] in methods:
                rows.append(replay(run))
                print(f"replayed {run}", file=sys.stderr, flush=True)
    if not rows:
        print("error: no finished runs of the search methods", file=sys.stderr)
        return 2
    text = report(rows)
    out = args.out or args.sweeps[0] / "selection_study.json"
    atomic_write_json(out, {"rows": rows, "table": text})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
