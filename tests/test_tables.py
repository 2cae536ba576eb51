"""Aggregation of multirun folders into tables, on synthetic run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tables", ROOT / "analysis" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def _run(sweep: Path, job: int, overrides: list[str], test: dict | None, evals: int = 10) -> None:
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if test is not None:
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        results = {
            "method": "sae",
            "seed": seed,
            "test": {**test, "mean": sum(test.values()) / len(test)},
            "models_scored": evals,
            "examples_scored": 10 * evals,
            "wall_seconds": 5.0,
        }
        (folder / "results.json").write_text(json.dumps(results))


def _sweep(tmp_path: Path, with_unfinished: bool = False) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {
        "hydra": {
            "sweeper": {"params": {"scoring": "global,local", "seed": "0,1"}},
            "overrides": {"task": []},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    _run(sweep, 0, ["scoring=global", "seed=0"], {"a": 0.50, "b": 0.70}, evals=10)
    _run(sweep, 1, ["scoring=global", "seed=1"], {"a": 0.60, "b": 0.80}, evals=20)
    _run(sweep, 2, ["scoring=local", "seed=0"], {"a": 0.40, "b": 0.90})
    if with_unfinished:
        _run(sweep, 3, ["scoring=local", "seed=1"], None)
    return sweep


def test_values_std_and_best(tmp_path):
    sweep = _sweep(tmp_path)
    records, missing = tables.load([sweep])
    assert missing == [f"{sweep}: never started: scoring=local seed=1"]
    tasks, rows = tables.aggregate(records)
    assert tasks == ["a", "b"]
    by_label = {r["label"]: r for r in rows}
    glob = by_label["scoring=global"]
    assert glob["cells"]["a"] == pytest.approx((55.0, 5.0))  # mean, population std of 50 and 60
    assert glob["cells"]["b"] == pytest.approx((75.0, 5.0))
    assert glob["cells"]["mean"] == pytest.approx((65.0, 5.0))
    assert glob["models_scored"] == 15
    assert by_label["scoring=local"]["cells"]["b"] == pytest.approx((90.0, 0.0))
    text = tables.markdown(tasks, rows, "T")
    assert "**90.0 ± 0.0**" in text and "**55.0 ± 5.0**" in text  # best per column in bold
    assert "\\textbf{90.0 $\\pm$ 0.0}" in tables.latex(tasks, rows, "T")


def test_missing_and_unfinished_runs_are_named_and_refused(tmp_path, capsys):
    sweep = _sweep(tmp_path, with_unfinished=True)
    assert tables.main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "not a finished run (no results.json): scoring=local seed=1" in err
    assert "1 run(s) missing" in err
    assert tables.main([str(sweep), "--allow-missing", "--out", str(tmp_path / "out")]) == 0
    for name in ("table.md", "table.tex", "table.json", "table.png"):
        assert (tmp_path / "out" / name).is_file()


def test_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert tables.main([str(tmp_path / "empty")]) == 2
    assert "holds no run folders" in capsys.readouterr().err


def test_rows_in_natural_order():
    """Swept numbers sort as numbers, not as strings."""
    labels = ["sae, method.archive_size=10", "sae, method.archive_size=4", "sae, method.archive_size=8"]
    assert sorted(labels, key=tables.natural_key) == [labels[1], labels[2], labels[0]]
    assert sorted(["s_max=0.9", "s_max=0.45"], key=tables.natural_key) == ["s_max=0.45", "s_max=0.9"]
