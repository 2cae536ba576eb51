"""The statistics every table reports: pure functions of numbers, no I/O.

- `summary`: mean, sample standard deviation (n - 1), n and the 95% t-interval of the mean of
  per-seed values (a row's cell).
- `paired_t`: the per-seed differences of two methods (paired by seed) as a `Summary` (their
  mean, sample std and t-interval) and the two-sided one-sample t-test p against 0: the
  interval over seeds alone, wider than the bootstrap's when seeds are few (a percentile
  bootstrap over n seeds never crosses 0 when all n differences share a sign).
- `paired_bootstrap`: SAE minus another method, paired by seed and by test item: the mean
  difference, a 95% percentile CI and a two-sided p-value from a bootstrap that resamples
  seeds and, within each task, test items (both with replacement, one item draw shared by all
  seeds since every seed is tested on the same items). Seeds carry the search's randomness,
  items the test set's sampling noise; resampling both puts both in the interval.

The p-value is the bootstrap's two-sided tail at zero: p = min(1, 2 min(P*(d <= 0), P*(d >= 0)))
with P* the share of bootstrap replicates, each count taken as (k + 1) / (B + 1) so that p is
never exactly 0 with a finite number of replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single value
    n: int
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summary(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean ± sample std and the t-interval mean ± t_{(1+level)/2, n-1} std / sqrt(n) (a single
    value has no spread to estimate: its interval is the value itself, std 0)."""
    data = [float(v) for v in values]
    n = len(data)
    if n == 0:
        raise ValueError("summary of no values")
    mean = math.fsum(data) / n
    if n == 1:
        return Summary(mean, 0.0, 1, mean, mean)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def paired_t(differences: Sequence[float], level: float = LEVEL) -> tuple[Summary, float]:
    """Per-seed differences: their `summary` and the paired t-test's two-sided p (1 when every
    difference is 0, 0 when all are one nonzero value)."""
    cell = summary(differences, level)
    if cell.n < 2:
        raise ValueError("a paired t-test needs >= 2 differences")
    if cell.std == 0:
        return cell, 1.0 if cell.mean == 0 else 0.0
    t = cell.mean / (cell.std / math.sqrt(cell.n))
    return cell, float(2 * scipy_stats.t.sf(abs(t), cell.n - 1))


@dataclass(frozen=True)
class PairedDifference:
    diff: float  # mean over tasks of (mean over seeds and items of a - b)
    ci_low: float
    ci_high: float
    half_width: float
    p: float
    n_seeds: int
    n_items: int  # test items per seed, all tasks together

    def to_json(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    replicates: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
    chunk: int = 500,
) -> PairedDifference:
    """`a[task]`, `b[task]`: arrays (seeds x items) of per-item correctness (0/1) or scores of the
    two methods, the same seeds in the same order and the same items in the same order. The
    statistic is the difference of the mean over tasks of each task's accuracy (the tables'
    `mean` column); pass one task for a task's own column."""
    tasks = sorted(a)
    if sorted(b) != tasks or not tasks:
        raise ValueError(f"paired tasks differ: {sorted(a)} vs {sorted(b)}")
    diffs = []
    for task in tasks:
        x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
        if x.shape != y.shape or x.ndim != 2 or x.size == 0:
            raise ValueError(
                f"task {task!r}: paired arrays must share one (seeds, items) shape: {x.shape} vs {y.shape}"
            )
        diffs.append(x - y)
    n_seeds = diffs[0].shape[0]
    if any(d.shape[0] != n_seeds for d in diffs):
        raise ValueError("every task needs the same seeds")
    observed = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    boot = np.zeros(replicates)
    for start in range(0, replicates, chunk):
        size = min(chunk, replicates - start)
        seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size) / n_seeds
        total = np.zeros(size)
        for d in diffs:
            n_items = d.shape[1]
            item_weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=size) / n_items
            per_seed = item_weights @ d.T  # (size, seeds): each replicate's item-weighted mean per seed
            total += np.einsum("bs,bs->b", per_seed, seed_weights)
        boot[start : start + size] = total / len(diffs)
    alpha = 1 - level
    low, high = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    below = (np.count_nonzero(boot <= 0) + 1) / (replicates + 1)
    above = (np.count_nonzero(boot >= 0) + 1) / (replicates + 1)
    p = min(1.0, 2 * min(below, above))
    return PairedDifference(observed, low, high, (high - low) / 2, p, n_seeds, sum(d.shape[1] for d in diffs))
