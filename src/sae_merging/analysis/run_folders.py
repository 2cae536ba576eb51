"""The one reader of finished run folders: which folders are runs, what a run's setting is, and
its files (results, metrics per generation, per-item test results).

A run folder is one `python run.py` (or `runner.run`) wrote: Hydra saves `.hydra/` at the start
(the overrides, the composed config, the group choices), the run then writes `metrics.jsonl`
every generation and `results.json` and `test_items.jsonl` at the end
(`sae_merging.runtime.runner`; the names: `sae_merging.runtime.outputs`). The tables
(`table_report`), SAE's mechanism (`mechanism_report`) and the selection study read runs only
through this module.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from sae_merging.runtime.outputs import METRICS_FILE, RESULTS_FILE, TEST_ITEMS_FILE

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
MULTIRUN_FILE = "multirun.yaml"  # a multirun's definition, in its sweep folder
SEED_KEYS = ("seed", "+seed")
NOT_SETTINGS = ("logger", "progress", "threads", "device")  # overrides that do not change a result


class RunFolderError(ValueError):
    """A folder that is not what the analysis needs (not a run, no saved config, no runs)."""


def is_run(folder: Path) -> bool:
    """A run folder: Hydra saved its overrides there, or the run logged a generation."""
    return (folder / OVERRIDES_FILE).is_file() or (folder / METRICS_FILE).is_file()


def find_runs(path: Path) -> list[Path]:
    """The run folders at or under `path` (a run, a multirun, or a folder of multiruns), in
    path order; a run's own subfolders are not searched."""
    if is_run(path):
        return [path]
    found = []
    for folder, subfolders, _ in os.walk(path):
        if is_run(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()
    return sorted(found)


def override_strings(run_dir: Path) -> list[str]:
    """The overrides the run was started with, as typed (none for a run without `.hydra/`)."""
    path = run_dir / OVERRIDES_FILE
    return yaml.safe_load(path.read_text()) or [] if path.is_file() else []


def parsed_overrides(overrides: list[str]) -> list:
    """Overrides parsed as Hydra parses them (quoting, `+`/`~` prefixes, sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def overrides(run_dir: Path) -> dict[str, str]:
    """The run's overrides as typed: key -> value (for matching the sweep's definition)."""
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed_overrides(override_strings(run_dir))}


def _values(override) -> list[str]:
    """The values a parsed override sweeps over (one, when it is not a sweep)."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def expected_runs(sweep_dir: Path) -> list[tuple[tuple[str, str], ...]] | None:
    """The override combinations the sweep defined (from Hydra's `multirun.yaml`, its sweeps
    expanded as Hydra expands them)."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    hydra = config.get("hydra", {})
    params = {key: str(values) for key, values in ((hydra.get("sweeper") or {}).get("params") or {}).items()}
    sweeps = parsed_overrides([f"{key}={values}" for key, values in params.items()])
    task_overrides = parsed_overrides(hydra.get("overrides", {}).get("task", []))
    # the command line's overrides come after the sweeper's params, as Hydra applies them: one of
    # the same key replaces that axis (`seed=0` on a 10-seed experiment runs seed 0 alone)
    swept = {o.key_or_group for o in sweeps}
    sweeps += [o for o in task_overrides if o.is_sweep_override() or o.key_or_group in swept]
    axes = {o.key_or_group: [(o.key_or_group, v) for v in _values(o)] for o in sweeps}
    return [tuple(sorted(combo)) for combo in itertools.product(*axes.values())] if axes else None


def _format(value) -> str:
    """A saved config value as an override would write it."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings(run_dir: Path) -> dict[str, str]:
    """Each overridden setting of a run with the value the run actually used, read from the
    config it saved: a config-group choice from `.hydra/hydra.yaml`, any other key from
    `.hydra/config.yaml`."""
    folder = run_dir / ".hydra"
    if not (folder / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir}: no saved config (.hydra/config.yaml); not a Hydra run folder")
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    hydra_file = folder / "hydra.yaml"
    hydra = yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else {}
    choices = ((hydra or {}).get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    found = {}
    for key, value in overrides(run_dir).items():
        if key in choices:
            found[key] = _format(choices[key])
            continue
        node, known = config, True
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = False
                break
            node = node[part]
        found[key] = _format(node) if known else value  # (e.g. a hydra.* setting)
    return found


def setting_label(run_dir: Path) -> str:
    """The run's setting as one label: its overrides other than the seed and those that change
    no result (`NOT_SETTINGS`), sorted ('' for none). Runs of one label differ only by seed."""
    ignored = (*SEED_KEYS, *NOT_SETTINGS)
    kept = [o for o in override_strings(run_dir) if o.partition("=")[0].lstrip("+~") not in ignored]
    return ",".join(sorted(kept))


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's `results.json` (None for a run that did not finish)."""
    path = run_dir / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's `metrics.jsonl`, one dict per generation."""
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_test_items(run_dir: Path) -> dict[str, dict[str, bool]] | None:
    """Per task, the chosen model's correctness on each test item (None for an older run)."""
    path = run_dir / TEST_ITEMS_FILE
    if not path.is_file():
        return None
    items: dict[str, dict[str, bool]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            items[row["task"]][row["uid"]] = bool(row["correct"])
    return dict(items)
