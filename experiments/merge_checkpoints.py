"""Task arithmetic of whole checkpoints, streamed from disk: the `sae-merge` command
(`sae_merging.runtime.merge_command`, where the logic and its documentation live).

    python experiments/merge_checkpoints.py --base BASE --experts E1 E2 --scale 0.7 --out merged/
    python experiments/merge_checkpoints.py --base BASE --experts E1 E2 --prune 0.6 --out merged/
    python experiments/merge_checkpoints.py ... --threads 1      # CPU threads (default auto)
"""

from __future__ import annotations

from sae_merging.runtime.merge_command import (  # noqa: F401  (this script's interface)
    copy_model_files,
    input_problems,
    local_folder,
    main,
    merge_checkpoints,
)

if __name__ == "__main__":
    main()
