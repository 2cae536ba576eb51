"""Aggregation of multirun folders into tables, on synthetic run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sae_merging.analysis import table_report as tables
from sae_merging.analysis.run_folders import RunFolderError

GROUPS = ("method", "scoring", "scorer", "ablation")


def _hydra_files(folder: Path, overrides: list[str], config: dict | None = None) -> None:
    """What Hydra saves in a run's `.hydra/`: the overrides, the composed config (here each
    override's value as YAML reads it, unless given) and the group choices."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    pairs = [o.lstrip("+~").split("=", 1) for o in overrides]
    choices = {key: value for key, value in pairs if key in GROUPS}
    if config is None:
        config = {}
        for key, value in pairs:
            if key not in GROUPS:
                *parents, leaf = key.split(".")
                node = config
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(value)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )


def _run(sweep: Path, job: int, overrides: list[str], test: dict | None, evals: int = 10) -> None:
    folder = sweep / str(job)
    _hydra_files(folder, overrides)
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
    # 50 and 60: mean 55, sample std sqrt(50) = 7.071, t_{0.975, 1} = 12.706 -> half-width 63.53
    half = 12.706204736174707 * 50**0.5 / 2**0.5
    assert glob["cells"]["a"] == pytest.approx(
        {"mean": 55.0, "std": 50**0.5, "n": 2, "ci_low": 55 - half, "ci_high": 55 + half}
    )
    assert glob["cells"]["b"]["mean"] == pytest.approx(75.0)
    assert glob["cells"]["mean"]["std"] == pytest.approx(50**0.5)
    assert glob["models_scored"] == 15
    assert by_label["scoring=local"]["cells"]["b"] == pytest.approx(
        {"mean": 90.0, "std": 0.0, "n": 1, "ci_low": 90.0, "ci_high": 90.0}
    )
    text = tables.markdown(tasks, rows, "T")
    # one seed: its value and n, no made-up spread or interval
    assert "**90.0 (n = 1)**" in text and "**55.0 ± 7.1 [-8.5, 118.5]**" in text and "90.0 ± 0.0" not in text
    assert "\\textbf{90.0 (n = 1)}" in tables.latex(tasks, rows, "T")


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


def test_swept_values_come_from_the_saved_config(tmp_path):
    """A row shows the value the run used, as its saved config holds it (`.9` ran as 0.9; a
    group choice from hydra.yaml), and the sweep's definition is expanded as Hydra expands it
    (a quoted value with a comma is one value)."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {"hydra": {"sweeper": {"params": {"schedule.s_max": ".9,'0.5,x'", "+ablation": "wide_range"}}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    _run(sweep, 0, ["schedule.s_max=.9", "+ablation=wide_range", "seed=0"], {"a": 0.5})
    records, missing = tables.load([sweep])
    assert records[0]["overrides"] == {"schedule.s_max": "0.9", "ablation": "wide_range", "seed": "0"}
    assert missing == [f"{sweep}: never started: ablation=wide_range schedule.s_max='0.5,x'"]
    _, rows = tables.aggregate(records)
    assert rows[0]["label"] == "default"  # one run: nothing varies
    _run(sweep, 1, ["schedule.s_max=0.50", "+ablation=wide_range", "seed=0"], {"a": 0.6})
    _, rows = tables.aggregate(tables.load([sweep])[0])
    assert [r["label"] for r in rows] == ["schedule.s_max=0.5", "schedule.s_max=0.9"]


def test_a_run_without_saved_config_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, 0, ["seed=0"], {"a": 0.5})
    (sweep / "0" / ".hydra" / "config.yaml").unlink()
    with pytest.raises(RunFolderError, match="no saved config"):
        tables.load([sweep])


def test_rows_in_natural_order():
    """Swept numbers sort as numbers, not as strings."""
    labels = ["sae, method.archive_size=10", "sae, method.archive_size=4", "sae, method.archive_size=8"]
    assert sorted(labels, key=tables.natural_key) == [labels[1], labels[2], labels[0]]
    assert sorted(["s_max=0.9", "s_max=0.45"], key=tables.natural_key) == ["s_max=0.45", "s_max=0.9"]


def _paired_run(
    sweep: Path, job: int, method: str, seed: int, correct: dict[str, list[int]], extra: tuple[str, ...] = ()
) -> None:
    folder = sweep / str(job)
    _hydra_files(folder, [f"method={method}", f"seed={seed}", *extra])
    test = {t: sum(c) / len(c) for t, c in correct.items()}
    results = {
        "method": method,
        "seed": seed,
        "test": {**test, "mean": sum(test.values()) / len(test)},
        "models_scored": 1,
        "examples_scored": 10,
        "wall_seconds": 1.0,
    }
    (folder / "results.json").write_text(json.dumps(results))
    rows = [
        {"task": t, "uid": f"{t}/{i}", "correct": bool(c)}
        for t, cs in correct.items()
        for i, c in enumerate(cs)
    ]
    (folder / "test_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_rows_by_seed_and_item(tmp_path):
    """SAE minus PSO, paired: the difference is the mean over seeds and items, per task and for
    the mean of the tasks; table.json holds diff, CI, half-width, p and n_seeds."""
    sweep = tmp_path / "sweep"
    sae = {
        0: {"a": [1, 1, 0, 1], "b": [1, 0]},
        1: {"a": [1, 0, 0, 1], "b": [1, 1]},
        2: {"a": [1, 1, 1, 1], "b": [0, 0]},
    }
    pso = {
        0: {"a": [1, 0, 0, 1], "b": [0, 0]},
        1: {"a": [0, 0, 0, 1], "b": [1, 1]},
        2: {"a": [1, 1, 0, 1], "b": [0, 1]},
    }
    job = 0
    for seed in range(3):
        for method, data in (("sae", sae), ("pso", pso)):
            _paired_run(sweep, job, method, seed, data[seed])
            job += 1
    out = tmp_path / "out"
    assert tables.main([str(sweep), "--out", str(out)]) == 0
    saved = json.loads((out / "table.json").read_text())
    (entry,) = saved["paired"]
    assert entry["label"] == "sae − pso"
    diff_a = np.mean([np.subtract(sae[s]["a"], pso[s]["a"]).mean() for s in range(3)]) * 100
    diff_b = np.mean([np.subtract(sae[s]["b"], pso[s]["b"]).mean() for s in range(3)]) * 100
    columns = entry["columns"]
    assert columns["a"]["diff"] == pytest.approx(diff_a) and columns["b"]["diff"] == pytest.approx(diff_b)
    assert columns["mean"]["diff"] == pytest.approx((diff_a + diff_b) / 2)
    for column in columns.values():
        assert set(column) >= {"diff", "ci_low", "ci_high", "half_width", "p", "n_seeds"}
        assert column["n_seeds"] == 3 and column["ci_low"] <= column["diff"] <= column["ci_high"]
        assert column["half_width"] == pytest.approx((column["ci_high"] - column["ci_low"]) / 2)
    assert "sae − pso" in (out / "table.md").read_text()


def test_one_table_per_value_of_by_and_a_summary_side_by_side(tmp_path):
    """`--by scoring`: one table per value, in the order the sweep declared them (local before
    global here), each with its own rows and paired differences (by hand); the summary puts each
    row's mean and each difference's mean side by side; a key no run overrides is refused."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {"hydra": {"sweeper": {"params": {"scoring": "local,global", "seed": "0,1"}}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    correct = {  # per scoring, method, seed: one task's items
        "local": {"sae": [[1, 1, 0, 0], [1, 1, 1, 0]], "pso": [[1, 0, 0, 0], [1, 1, 0, 0]]},
        "global": {"sae": [[0, 0, 0, 0], [1, 0, 0, 0]], "pso": [[1, 1, 0, 0], [1, 1, 1, 0]]},
    }
    job = 0
    for scoring, methods in correct.items():
        for method, seeds in methods.items():
            for seed, items in enumerate(seeds):
                _paired_run(sweep, job, method, seed, {"t": items}, (f"scoring={scoring}",))
                job += 1
    out = tmp_path / "out"
    assert tables.main([str(sweep), "--out", str(out), "--by", "scoring"]) == 0
    saved = json.loads((out / "table.json").read_text())
    assert list(saved["panels"]) == ["local", "global"]
    for scoring, panel in saved["panels"].items():
        assert [row["label"] for row in panel["rows"]] == ["sae", "pso"]
        sae, pso = correct[scoring]["sae"], correct[scoring]["pso"]
        diff = 100 * np.mean(np.subtract(sae, pso))
        (entry,) = panel["paired"]
        assert entry["columns"]["mean"]["diff"] == pytest.approx(diff)
        assert panel["rows"][0]["cells"]["mean"]["mean"] == pytest.approx(100 * np.mean(sae))
        assert (out / f"scoring={scoring}" / "table.md").is_file()
    text = (out / "table.md").read_text()
    assert "| setting | scoring=local | scoring=global |" in text
    assert "| sae − pso | +25.0 [" in text and "-50.0 [" in text
    assert (out / "panels.png").is_file()
    assert tables.main([str(sweep), "--out", str(out), "--by", "lab"]) == 2


def _metrics(folder: Path, generations: list[tuple[list[str], list[float]]]) -> None:
    """A run's metrics.jsonl: per generation the experts present and the ratios lambda."""
    lines = [
        {"generation": g, "archive/experts": experts, "ratio/values": ratios, "omega/gap_mean": 0.01 * g}
        for g, (experts, ratios) in enumerate(generations)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_two_references_and_the_mechanism_columns(tmp_path):
    """`--reference` twice: one block per reference, the pair already shown not repeated, each
    difference the hand-computed mean over seeds and items; `--mechanism`: lambda's spread and
    expert survival per row from the runs' metrics.jsonl, by hand."""
    sweep = tmp_path / "sweep"
    correct = {
        "sae": {0: [1, 1, 0, 1], 1: [1, 0, 0, 1], 2: [1, 1, 1, 1]},
        "pso": {0: [1, 0, 0, 1], 1: [0, 0, 0, 1], 2: [1, 1, 0, 1]},
        "m2n2": {0: [0, 0, 0, 1], 1: [1, 0, 0, 0], 2: [1, 0, 0, 1]},
    }
    both, first = ["a", "b"], ["a"]
    mechanism = {  # per seed: (experts, ratios) per generation
        0: [(both, []), (both, [0.4, 0.5, 0.6]), (both, [0.5, 0.5])],  # spread (0.18 + 0) / 2
        1: [(both, []), (both, [0.3, 0.7]), (first, [0.5, 0.5])],  # (0.36 + 0) / 2; b last in 1
        2: [(both, []), (["b"], [0.4, 0.5, 0.6]), (["b"], [0.5, 0.5])],  # 0.09; a last in 0
    }
    job = 0
    for seed in range(3):
        for method, data in correct.items():
            _paired_run(sweep, job, method, seed, {"t": data[seed]})
            if method == "sae":
                _metrics(sweep / str(job), mechanism[seed])
            job += 1
    out = tmp_path / "out"
    references = ["--reference", "sae", "--reference", "pso"]
    assert tables.main([str(sweep), "--out", str(out), *references, "--mechanism"]) == 0
    saved = json.loads((out / "table.json").read_text())
    assert [e["label"] for e in saved["paired"]] == ["sae − pso", "sae − m2n2", "pso − m2n2"]
    pso_m2n2 = saved["paired"][2]["columns"]["mean"]
    # by hand: per seed (2 - 1) / 4, (1 - 1) / 4, (3 - 2) / 4 -> mean 1/6 of the items
    assert pso_m2n2["diff"] == pytest.approx(100 / 6) and pso_m2n2["n_seeds"] == 3
    # paired t over the per-seed differences 25, 0, 25 (points): std 14.43, t_{0.975, 2} = 4.303
    half = 4.302653 * np.std([25, 0, 25], ddof=1) / 3**0.5
    assert pso_m2n2["seed_t"]["ci_low"] == pytest.approx(100 / 6 - half, abs=1e-4)
    assert pso_m2n2["seed_t"]["p"] == pytest.approx(0.183503, abs=1e-5)  # t = 2.0 on 2 df
    rows = {row["label"]: row for row in saved["rows"]}
    assert rows["pso"]["mechanism"] is None and rows["m2n2"]["mechanism"] is None
    m = rows["sae"]["mechanism"]
    spreads = [0.09, 0.18, 0.09]
    assert m["lambda_spread"]["mean"] == pytest.approx(0.12)
    assert m["lambda_spread"]["std"] == pytest.approx(np.std(spreads, ddof=1))
    assert m["lambda_spread"]["n"] == 3
    # sample std of [0.4, 0.5, 0.6] is 0.1, of [0.3, 0.7] sqrt(0.08), of [0.5, 0.5] 0
    assert m["lambda_std"]["mean"] == pytest.approx(np.mean([0.1 / 2, 0.08**0.5 / 2, 0.1 / 2]))
    assert m["experts_kept"] == pytest.approx({"a": 2 / 3, "b": 2 / 3})
    assert m["last_seen_mean"] == pytest.approx({"a": 4 / 3, "b": 5 / 3})
    assert m["omega_gap"] == pytest.approx(0.015)  # generations 1 and 2
    text = (out / "table.md").read_text()
    assert "| sae | 0.1200 ± 0.0520 |" in text and "67% (1.3)" in text
    assert text.count("paired differences in accuracy points") == 2
    assert (out / "paired.png").is_file()


def test_lab_runs_get_their_builds_reference_rows(tmp_path, micro_lab, micro_lab_config):
    """Runs of one lab build show that build's reference rows (from its build.json, values as
    there); runs of two builds, or not of the lab, show none."""
    build = json.loads((micro_lab.root / "build.json").read_text())
    records = []
    for seed in (0, 1):
        folder = tmp_path / f"run{seed}"
        _hydra_files(folder, [f"seed={seed}"], {"lab": micro_lab_config, "seed": seed})
        records.append({"run": str(folder)})
    references = tables.lab_references(records)
    assert references["test_accuracy"] == build["test_accuracy"]
    text = tables.markdown(["lab-math", "lab-multilingual"], [], "t", references=references)
    base = build["test_accuracy"]["base"]
    mean = 100 * (base["lab-math"] + base["lab-multilingual"]) / 2
    assert (
        f"| base | {100 * base['lab-math']:.1f} | {100 * base['lab-multilingual']:.1f} | {mean:.1f} |" in text
    )
    other = tmp_path / "other"
    _hydra_files(other, ["seed=2"], {"lab": {**micro_lab_config, "expert_overlap": 0.123}})
    assert tables.lab_references([*records, {"run": str(other)}]) is None
    plain = tmp_path / "plain"
    _hydra_files(plain, ["seed=3"])
    assert tables.lab_references([{"run": str(plain)}]) is None


def test_chosen_origins_counted_per_row():
    """The row's picks: particles and grid points counted together, experts by name, most
    frequent first; runs without a recorded pick are not counted."""
    results = [
        {"chosen": {"origin": "particle:2"}},
        {"chosen": {"origin": "particle:0"}},
        {"chosen": {"origin": "expert:multilingual"}},
        {"chosen": {"origin": "child"}},
        {"chosen": {"origin": "expert:multilingual"}},
        {"chosen": {"origin": "particle:11"}},
        {},
    ]
    assert tables.chosen_origins(results) == {"particle": 3, "expert:multilingual": 2, "child": 1}
    assert list(tables.chosen_origins(results)) == ["particle", "expert:multilingual", "child"]


def test_the_build_report_and_the_tables_round_a_mean_alike():
    """97.45 and 85.05 average to 91.25: the lab build's printout and a table's reference row
    say the same (they printed 91.3 and 91.2 when each summed its own way)."""
    from sae_merging.lab.build import report_table

    accuracy = {"lab-math": 0.9745, "lab-multilingual": 0.8505}
    report = {
        "test_accuracy": {"multitask": accuracy},
        "seconds": {},
        **{"parameters": 1, "vocab_size": 1, "total_seconds": 0, "torch_threads": 1},
    }
    build_row = next(line for line in report_table(report).splitlines() if line.startswith("| multitask"))
    references = {"build": "b", "test_accuracy": {"multitask": accuracy}}
    table = tables.markdown(["lab-math", "lab-multilingual"], [], "t", references=references)
    table_row = next(line for line in table.splitlines() if line.startswith("| multitask"))
    assert build_row.split(" | ")[:4] == table_row.split(" | ")[:4] == ["| multitask", "97.5", "85.0", "91.2"]


def test_the_closing_line_names_paired_png_only_when_written(tmp_path):
    """A report with no pair to chart (one seed) says so instead of naming a missing file."""
    assert not tables.paired_chart([{"reference": "sae", "label": "pso"}], tmp_path / "paired.png")
    assert "no paired.png" in tables._written(tmp_path)
    (tmp_path / "paired.png").write_bytes(b"png")
    assert tables._written(tmp_path).endswith("and paired.png")


def test_a_command_line_override_replaces_the_experiments_sweep_axis(tmp_path):
    """`run.py -m experiment=... seed=0` on an experiment sweeping seeds 0,1 runs seed 0 alone
    (Hydra applies the command line after the sweeper's params): only those runs are expected."""
    from sae_merging.analysis.run_folders import expected_runs

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {
        "hydra": {
            "sweeper": {"params": {"scoring": "global,local", "seed": "0,1"}},
            "overrides": {"task": ["seed=0", "lab=micro"]},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    expected = [(("scoring", "global"), ("seed", "0")), (("scoring", "local"), ("seed", "0"))]
    assert expected_runs(sweep) == expected
    _run(sweep, 0, ["scoring=global", "seed=0"], {"a": 0.5})
    _run(sweep, 1, ["scoring=local", "seed=0"], {"a": 0.6})
    assert tables.load([sweep])[1] == []  # nothing missing
