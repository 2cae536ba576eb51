"""Measurement 4: one SAE generation at lab scale (`run.py schedule.steps=1 logger=none`): the
merge / prune / evaluate seconds of generation 1 from metrics.jsonl, against the generation's
wall time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .common import Row, lab_config


def sae_generation(args) -> dict:
    """Seconds per section of generation 1 of an SAE run on the default lab."""
    from sae_merging.runtime import runner

    overrides = ["schedule.steps=1", "logger=none", "progress=false"]
    overrides.append(f"threads={args.threads}")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="sae-run-") as tmp:
        runner.run(lab_config(overrides), Path(tmp) / "run")
        lines = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = lines[0], lines[1]
    sections = {k.split("/", 1)[1]: v for k, v in second.items() if k.startswith("seconds/")}
    return {"sections": sections, "wall": second["time"] - first["time"]}


def measure(args, results: dict) -> list[Row]:
    """Measurement 4's row."""
    rows: list[Row] = []
    generation = sae_generation(args)
    results["generation"] = generation
    sections = generation["sections"]
    share = (sections.get("merge", 0.0) + sections.get("prune", 0.0)) / generation["wall"]
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(sections.items()))
    rows.append(
        Row(
            "SAE generation 1 (lab): merge + prune share",
            parts,
            f"generation {generation['wall']:.2f} s",
            share,
            "<= 0.10",
            share <= 0.10,
        )
    )
    return rows
