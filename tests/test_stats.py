"""The table statistics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sae_merging.analysis.stats import paired_bootstrap, paired_t, summary


def test_summary_sample_std_and_t_interval():
    # 1, 2, 3, 4: mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3,
    # t_{0.975, 3} = 3.182446305, half-width 3.182446305 * sqrt(5/3) / 2
    s = summary([1, 2, 3, 4])
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(math.sqrt(5 / 3), abs=1e-12)
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-9)
    assert s.half_width == pytest.approx(half, abs=1e-9)


def test_summary_of_one_value_has_no_spread():
    s = summary([0.7])
    assert (s.mean, s.std, s.n, s.ci_low, s.ci_high) == (0.7, 0.0, 1, 0.7, 0.7)
    with pytest.raises(ValueError):
        summary([])


def test_paired_bootstrap_constant_difference():
    """Every item one point better on every seed: the CI is the point, p is the smallest
    possible, 2 / (B + 1)."""
    a = {"t": np.ones((3, 5))}
    b = {"t": np.zeros((3, 5))}
    result = paired_bootstrap(a, b, replicates=999, seed=1)
    assert (result.diff, result.ci_low, result.ci_high, result.half_width) == (1.0, 1.0, 1.0, 0.0)
    assert result.p == pytest.approx(2 / 1000)
    assert (result.n_seeds, result.n_items) == (3, 5)


def test_paired_bootstrap_two_items_by_hand():
    """One seed, differences (0, 1): a bootstrap mean is 0, 1/2 or 1 with probabilities
    1/4, 1/2, 1/4, so the 95% CI is [0, 1], the bootstrap variance var(d) / n = 0.125 and
    P*(d <= 0) = 1/4, p = 2 * 1/4 = 0.5."""
    result = paired_bootstrap({"t": np.array([[1.0, 1.0]])}, {"t": np.array([[1.0, 0.0]])}, 20_000, seed=3)
    assert result.diff == 0.5
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    assert result.p == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_resamples_seeds_too():
    """Two seeds, the difference 1 on every item of seed 0 and 0 on seed 1: the item draw
    changes nothing, the seed draw gives 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4."""
    a = {"t": np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])}
    b = {"t": np.zeros((2, 3))}
    result = paired_bootstrap(a, b, 20_000, seed=0)
    assert result.diff == 0.5
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    assert result.p == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_mean_over_tasks_and_fixed_seed():
    """The statistic is the mean over tasks of each task's mean difference (tasks of different
    sizes weigh the same), and a fixed seed gives the same interval twice."""
    rng = np.random.default_rng(0)
    a = {"x": rng.integers(0, 2, (4, 10)), "y": rng.integers(0, 2, (4, 30))}
    b = {"x": rng.integers(0, 2, (4, 10)), "y": rng.integers(0, 2, (4, 30))}
    result = paired_bootstrap(a, b, 2000, seed=7)
    expected = ((a["x"] - b["x"]).mean() + (a["y"] - b["y"]).mean()) / 2
    assert result.diff == pytest.approx(expected, abs=1e-12)
    assert result.ci_low <= result.diff <= result.ci_high
    assert paired_bootstrap(a, b, 2000, seed=7) == result
    with pytest.raises(ValueError):
        paired_bootstrap({"x": np.ones((2, 3))}, {"x": np.ones((2, 4))})


def test_paired_t_by_hand():
    """Differences 1, 2, 3, 6: mean 3, sample std sqrt(14 / 3), t = 3 / (std / 2) = 2.777 on 3
    degrees of freedom: two-sided p = 0.06914 (as scipy.stats.ttest_1samp), t_{0.975, 3} = 3.1824."""
    cell, p = paired_t([1.0, 2.0, 3.0, 6.0])
    std = math.sqrt(14 / 3)
    assert (cell.mean, cell.n) == (3.0, 4) and cell.std == pytest.approx(std)
    assert cell.ci_low == pytest.approx(3 - 3.182446 * std / 2, abs=1e-5)
    assert p == pytest.approx(0.069137, abs=1e-5)
    # six positive seeds: the t-test can still cross 0 where a bootstrap over seeds cannot
    assert paired_t([0.45, 0.38, 1.6, 3.85, 0.05, 0.1])[0].ci_low < 0
    assert paired_t([0.0, 0.0, 0.0])[1] == 1.0 and paired_t([0.5, 0.5])[1] == 0.0
    with pytest.raises(ValueError):
        paired_t([1.0])
