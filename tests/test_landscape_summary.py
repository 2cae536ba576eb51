"""The landscape summary's measures and statistics against hand computations, and the command's
pairing: a model compared with an exact copy of itself differs by exactly 0 on every draw."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_analysis import _compose

from sae_merging.analysis import landscape_report
from sae_merging.analysis.summary import (
    METRICS,
    SummarySpec,
    disc_mask,
    disc_points,
    fit_quadratic,
    interval,
    paired,
    plane_shape,
)


def test_quadratic_fit_recovers_the_plane_hessian():
    coords = np.linspace(-0.25, 0.25, 5)
    alpha, beta = np.meshgrid(coords, coords)
    hessian = np.array([[3.0, 1.0], [1.0, 2.0]])
    losses = 0.7 + 0.2 * alpha - 0.1 * beta + 0.5 * (3 * alpha**2 + 2 * alpha * beta + 2 * beta**2)
    mask = disc_mask(coords, 0.25)
    assert mask.sum() == 13  # of the 5 x 5 grid: the axes and the 4 points at (±r/2, ±r/2)
    found, r2 = fit_quadratic(coords, losses, mask)
    np.testing.assert_allclose(found, hessian, atol=1e-10)
    assert r2 == pytest.approx(1.0, abs=1e-12)
    curvature, anisotropy = plane_shape(hessian)
    k1, k2 = (5 + math.sqrt(5)) / 2, (5 - math.sqrt(5)) / 2  # eigenvalues of [[3, 1], [1, 2]]
    assert curvature == pytest.approx(2.5) and anisotropy == pytest.approx((k1 - k2) / (k1 + k2))
    assert plane_shape(np.eye(2)) == (1.0, 0.0)  # a round bowl
    assert plane_shape(np.diag([2.0, -2.0]))[1] == pytest.approx(1.0)  # a saddle
    assert plane_shape(np.zeros((2, 2))) == (0.0, 0.0)


def test_disc_points():
    points = disc_points(0.25, 4, seed=3)
    assert points[0] == (0.0, 0.0) and len(points) == 4
    np.testing.assert_allclose([math.hypot(a, b) for a, b in points[1:]], 0.25)
    angles = sorted(math.atan2(b, a) % (2 * math.pi) for a, b in points[1:])
    np.testing.assert_allclose(np.diff(angles), 2 * math.pi / 3)
    assert disc_points(0.25, 4, seed=3) == points != disc_points(0.25, 4, seed=4)


def test_interval_and_paired_by_hand():
    stat = interval([1.0, 2.0, 4.0])
    std = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t_{0.975, 2}
    assert stat == pytest.approx(
        {"mean": 7 / 3, "std": std, "n": 3, "ci_low": 7 / 3 - half, "ci_high": 7 / 3 + half}, abs=1e-9
    )
    diff = paired([2.0, 3.0, 6.0], [1.0, 1.0, 2.0])  # differences 1, 2, 4
    t = (7 / 3) / (std / math.sqrt(3))
    assert diff["mean"] == pytest.approx(7 / 3) and diff["ci_low"] == pytest.approx(7 / 3 - half)
    assert diff["p"] == pytest.approx(2 * (1 - _t_cdf_2dof(t)), abs=1e-9)
    assert paired([1.0, 2.0], [1.0, 2.0])["p"] == 1.0


def _t_cdf_2dof(t: float) -> float:
    """Student t CDF with 2 degrees of freedom, in closed form."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_spec_refuses_what_gives_no_interval():
    with pytest.raises(ValueError, match="summary.replicates=1"):
        SummarySpec(replicates=1)
    with pytest.raises(ValueError, match="summary.grid=3: must be odd and >= 5"):
        SummarySpec(grid=3)
    with pytest.raises(ValueError, match="summary.grid=6"):
        SummarySpec(grid=6)


@pytest.mark.slow  # the landscape app on the micro lab: over a minute on 2 loaded cores
def test_summary_pairs_models_on_the_same_draws(micro_lab, tmp_path):
    copy = tmp_path / "copy-run"
    shutil.copytree(micro_lab.experts["math"], copy / "model")
    out = tmp_path / "summary"
    overrides = [
        "lab=micro",
        f"out_dir={out}",
        "analyses=[summary]",
        "summary.replicates=2",
        "summary.batch_size=4",
        "summary.grid=5",
        "summary.points=2",
        "convexity.ncv=6",
        "convexity.max_restarts=5",
        "progress=false",
        "models.multilingual_expert=null",
        f"models.sae_merged={copy}",
        "tasks=[lab-math]",
    ]
    landscape_report.main(_compose(overrides))
    results = json.loads((out / landscape_report.LANDSCAPE_FILE).read_text())
    measures = results["summary"]["measures"]["lab-math"]
    assert [len(measures[k]) for k in ("math_expert", "sae_merged")] == [2, 2]
    assert measures["sae_merged"] == measures["math_expert"]  # same directions and batches
    assert measures["math_expert"][0] != measures["math_expert"][1]  # replicates differ
    part = results["summary"]["intervals"]["lab-math"]
    assert list(part["paired"]) == ["sae_merged - math_expert"]
    for metric in METRICS:
        stat = part["paired"]["sae_merged - math_expert"][metric]
        assert stat["mean"] == 0.0 and stat["p"] == 1.0
        values = [r[metric] for r in measures["math_expert"]]
        assert part["models"]["math_expert"][metric]["mean"] == pytest.approx(np.mean(values))
    assert all(
        0.0 <= r["convexity"] <= 0.5 and 0.0 <= r["anisotropy"] <= 1.0 for r in measures["math_expert"]
    )
    text = (out / landscape_report.SUMMARY_FILE).read_text()
    assert "Math expert − SAE-merged" not in text and "SAE-merged − Math expert" in text


def test_a_run_that_chose_an_expert_is_flagged_when_used_as_a_merged_model(tmp_path, caplog):
    """A run folder stands for its chosen model; when that is an expert or a pruned copy of one,
    its landscape panel is no merge, and the log says so (a merged run: nothing said)."""
    import json
    import logging

    from sae_merging.analysis.landscape_report import resolve_model

    for name, origin in (("expert_run", "expert:multilingual"), ("merged_run", "child")):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
        (tmp_path / name / "results.json").write_text(json.dumps({"chosen": {"origin": origin}}))
    with caplog.at_level(logging.WARNING):
        resolved = resolve_model(str(tmp_path / "expert_run"), lambda: tmp_path)
        assert resolved == str(tmp_path / "expert_run" / "model")
        resolve_model(str(tmp_path / "merged_run"), lambda: tmp_path)
    flagged = [r.getMessage() for r in caplog.records]
    assert len(flagged) == 1 and "expert_run chose 'expert:multilingual', not a merge" in flagged[0]


def test_replicates_that_would_score_the_same_examples_are_refused():
    """A split no larger than the summary's batch gives every replicate the same examples: the
    Hessian measures would repeat exactly (p = 0 from nothing), so the run is refused."""
    from types import SimpleNamespace

    from sae_merging.analysis.landscape_report import _check_replicates_differ

    def batch(*uids):
        return [SimpleNamespace(uid=u) for u in uids]

    same = {"lab-math": [batch("a", "b"), batch("b", "a")]}
    with pytest.raises(ValueError, match=r"every replicate scores the same 2 test examples of lab-math"):
        _check_replicates_differ(same, 32, "test")
    _check_replicates_differ({"lab-math": [batch("a", "b"), batch("a", "c")]}, 2, "test")  # they differ
    _check_replicates_differ({"lab-math": [batch("a", "b")]}, 32, "test")  # one replicate: nothing to vary
