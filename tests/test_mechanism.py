"""SAE's diagnostics in every run (mixing ratios, omega, parents' p, expert survival, child-minus-
parent fitness) and the analysis command that draws them, on smoke runs of the micro lab."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

from sae_merging.analysis import mechanism_report
from sae_merging.merging.functions import mixing_ratio
from sae_merging.runtime import runner
from sae_merging.runtime.loggers import wandb_values

SMOKE = ["experiment=smoke", "progress=false", "schedule.steps=3"]


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, micro_lab):
    root = tmp_path_factory.mktemp("mechanism")
    settings = {"paper": [], "archive": ["method.omega_from=archive", "method.keep_experts=true"]}
    for name, overrides in settings.items():
        runner.run(compose_config(SMOKE + overrides), root / name)
    return root


@pytest.mark.parametrize("name", ["paper", "archive"])
def test_every_generation_logs_the_mechanism(runs, name):
    lines = _lines(runs / name)
    assert lines[0]["archive/experts"] == ["expert:math", "expert:multilingual"]
    for line in lines[1:]:
        ratios = line["ratio/values"]  # logged to 6 decimals
        quantiles = np.quantile(ratios, [0.05, 0.5, 0.95])
        logged = [line["ratio/q05"], line["ratio/q50"], line["ratio/q95"]]
        assert logged == pytest.approx(quantiles.tolist(), abs=1e-6)
        assert line["ratio/mean"] == pytest.approx(np.mean(ratios), abs=1e-6)
        assert line["ratio/std"] == pytest.approx(np.std(ratios), abs=1e-6)
        assert [line["ratio/min"], line["ratio/max"]] == pytest.approx([min(ratios), max(ratios)], abs=1e-6)
        assert len(line["pairs"]) == line["archive/size"] // 2
        per_pair = len(ratios) // len(line["pairs"])  # the pairs' ratios in order, one per tensor
        for k, pair in enumerate(line["pairs"]):
            # global scoring: every tensor of a pair gets eq. 5 of the logged p and omega
            (p_a, p_b), (w_a, w_b) = pair["p"], pair["omega"]
            own = ratios[k * per_pair : (k + 1) * per_pair]
            assert own == pytest.approx([mixing_ratio(p_a, w_a, p_b, w_b)] * per_pair, abs=1e-6)
            assert len(pair["gain"]) == 2 and isinstance(pair["accepted"], bool)
        assert line["children/accepted"] == sum(p["accepted"] for p in line["pairs"])
        assert line["archive/experts_alive"] == len(line["archive/experts"])
    if name == "archive":  # kept experts survive every generation
        assert all(len(line["archive/experts"]) == 2 for line in lines)
        # parents of different archive sparsity get lambda != 1/2 somewhere
        assert any(abs(r - 0.5) > 1e-3 for line in lines[1:] for r in line["ratio/values"])


def test_analysis_command_draws_lambda_and_survival(runs, tmp_path, capsys):
    app = mechanism_report
    out = tmp_path / "out"
    assert app.main([str(runs / "paper"), str(runs / "archive"), "--out", str(out)]) == 0
    report = json.loads((out / "mechanism.json").read_text())
    assert len(report) == 1  # no overrides saved by runner.run: one setting, both runs pooled
    group = next(iter(report.values()))
    assert group["n_runs"] == 2 and [g["generation"] for g in group["generations"]] == [0, 1, 2, 3]
    lines = {name: _lines(runs / name) for name in ("paper", "archive")}
    for index, generation in enumerate(group["generations"]):
        for expert in ("expert:math", "expert:multilingual"):
            alive = [expert in lines[name][index]["archive/experts"] for name in lines]
            assert generation["survival"][expert] == pytest.approx(sum(alive) / 2)
        if index:
            pooled = sorted(r for name in lines for r in lines[name][index]["ratio/values"])
            assert generation["lambda"]["n"] == len(pooled)
            assert generation["lambda"]["min"] == pytest.approx(pooled[0])
            assert [generation["lambda"][q] for q in ("q05", "q50", "q95")] == pytest.approx(
                np.quantile(pooled, [0.05, 0.5, 0.95]).tolist(), abs=1e-9
            )
            assert generation["lambda"]["std"] == pytest.approx(np.std(pooled, ddof=1), abs=1e-9)
    every = [r for name in lines for line in lines[name] for r in line.get("ratio/values", [])]
    overall = group["overall"]
    assert overall["lambda"]["n"] == len(every)
    assert [overall["lambda"][q] for q in ("q05", "q50", "q95")] == pytest.approx(
        np.quantile(every, [0.05, 0.5, 0.95]).tolist(), abs=1e-9
    )
    gaps = [np.mean([lines[name][i]["omega/gap_mean"] for name in lines]) for i in range(1, 4)]
    assert overall["omega_gap"] == pytest.approx(np.mean(gaps), abs=1e-12)
    assert overall["omega_gap"] > 0  # omega_from=archive: parents of different archive sparsity
    alive = [len(lines[name][-1]["archive/experts"]) for name in lines]
    assert overall["experts_alive"] == pytest.approx(np.mean(alive))
    assert list(out.glob("*_mechanism.png"))
    printed = capsys.readouterr().out
    assert "experts alive at generation 3" in printed and "omega gap" in printed
    assert app.main([str(tmp_path / "nothing")]) == 2
    other = tmp_path / "pso"  # another method's run in the same sweep: skipped, not an error
    other.mkdir()
    (other / "metrics.jsonl").write_text(json.dumps({"generation": 0, "fitness/best": 0.5}) + "\n")
    assert app.main([str(runs / "paper"), str(other), "--out", str(tmp_path / "mixed")]) == 0
    assert "skipped 1 run(s) without SAE diagnostics" in capsys.readouterr().out
    assert app.main([str(other), "--out", str(tmp_path / "none")]) == 2  # nothing left to analyse


def test_wandb_gets_ratio_histograms():
    import wandb

    values = wandb_values(
        {"generation": 3, "ratio/values": [0.4, 0.5, 0.6], "best/ident": "g1", "x": 1.5, "ok": True}
    )
    assert set(values) == {"generation", "ratio/values", "x"}
    assert isinstance(values["ratio/values"], wandb.Histogram) and values["x"] == 1.5
