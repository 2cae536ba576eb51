"""Turn the run folders of a multirun into a paper-style table (`sae_merging.analysis.table_report`).

    python analysis/tables.py outputs/tables/table2_ablation [more sweep folders...] \
        [--out outputs/tables/table2_ablation/report] [--title "Table 2"] [--reference ROW]... [--mechanism] \
        [--by KEY]

`python analysis/tables.py --help` lists the options; what the table holds: the module's docstring.
"""

import sys

from sae_merging.analysis.table_report import main

if __name__ == "__main__":
    sys.exit(main())
