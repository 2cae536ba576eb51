"""SAE's mechanism over generations for a run or a sweep: lambda histograms per generation and
expert survival (`sae_merging.analysis.mechanism`).

    python analysis/mechanism.py outputs/runs/<date>/<time>            # one run
    python analysis/mechanism.py outputs/tables/table2_ablation --out outputs/mechanism/table2

Writes `mechanism.json` (per setting and generation: lambda quantiles, mean, sample std, n;
the share of runs each expert survives in; per setting lambda's spread over runs) and
`<setting>_mechanism.png` under `--out` (default: `<first folder>/mechanism`). Runs of other
methods in the same sweep (no SAE diagnostics, e.g. PSO) are skipped and counted.
"""

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from sae_merging.analysis.mechanism import MechanismError, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    out = args.out or args.folders[0] / "mechanism"
    skipped: list[str] = []
    try:
        report = run(args.folders, out, skipped)
    except MechanismError as error:
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


if __name__ == "__main__":
    sys.exit(main())
