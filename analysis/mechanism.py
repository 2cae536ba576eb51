"""SAE's mechanism over generations for a run or a sweep: lambda histograms per generation and
expert survival (`sae_merging.analysis.mechanism_report`).

    python analysis/mechanism.py outputs/runs/<date>/<time>            # one run
    python analysis/mechanism.py outputs/tables/table2_ablation --out outputs/mechanism/table2

Writes `mechanism.json` (per setting and generation: lambda quantiles, mean, sample std, n;
the share of runs each expert survives in; per setting lambda's spread over runs) and
`<setting>_mechanism.png` under `--out` (default: `<first folder>/mechanism`). Runs of other
methods in the same sweep (no SAE diagnostics, e.g. PSO) are skipped and counted.
"""

import sys

from sae_merging.analysis.mechanism_report import main

if __name__ == "__main__":
    sys.exit(main())
