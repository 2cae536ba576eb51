"""The landscape claim as numbers: curvature, anisotropy and convexity near a model, with intervals.

A map over one random plane and 8 examples cannot carry the paper's claim (Figs. 3-5: SAE's
landscape is smoother and more isotropic than PSO's and the experts'): neighbouring cells swing
between 0 and 0.5. So each model is summarized over `replicates`, each a fresh pair of shared
random directions *and* a fresh batch (replicate r uses direction seed r and batch seed r, the
same for every model, so models are compared pairwise on the same draws). Within a disc of
`radius` around the model in the plane, a replicate measures:

- `curvature`: the mean of the two eigenvalues k1 >= k2 of the 2 x 2 Hessian of a quadratic
  least-squares fit L(a, b) = c + g.(a, b) + 1/2 (a, b) H (a, b)^T to the loss on the grid
  points inside the disc (per unit step along the filter-normalized directions);
- `anisotropy`: (k1 - k2) / (|k1| + |k2|), 0 for a round bowl, 1 when one direction is flat or
  curves the other way (the paper's "anisotropic loss surface");
- `loss_rise`: the mean of L - L(0) over those grid points (how fast the loss grows around
  the model: a flatness measure that needs no fit);
- `fit_r2`: the share of the loss's variance in the disc the quadratic explains (how much the
  two numbers above can be trusted);
- `convexity`: the paper's proxy |lambda_min| / (|lambda_max| + eps), clipped to [0, 0.5], of
  the full Hessian, averaged over `points` points of the disc (its centre, and the others on
  the circle of `radius` at evenly spaced angles turned by a seeded offset);
- `lambda_max`: the largest Hessian eigenvalue at the model (sharpness).

A point where the Lanczos solver does not converge is solved again by power iteration (counted
in the replicate's `fallbacks`), so no cell is left out.

Across replicates each measure is reported as mean, sample standard deviation (n - 1), n and a
95% Student-t interval, and model pairs as paired differences with a 95% t interval and the
paired t-test's p-value (an interval crossing zero is no detectable difference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from transformers import PreTrainedModel

from sae_merging.analysis.hessian import EigenSpec, HessianOperator, convexity, extreme_eigenvalues
from sae_merging.analysis.loss_plane import FixedBatch, PlanePerturbation, grid_coordinates, loss_grid
from sae_merging.analysis.stats import LEVEL, summary

METRICS = ("curvature", "anisotropy", "loss_rise", "fit_r2", "convexity", "lambda_max")


@dataclass(frozen=True)
class SummarySpec:
    """`replicates`: direction and batch seeds 0..n-1; `batch_size`: examples per replicate's
    batch; `radius`: the disc's radius in the plane; `grid`: loss points per axis over
    [-radius, radius]^2 (those inside the disc are fitted); `points`: convexity points."""

    replicates: int = 5
    batch_size: int = 32
    radius: float = 0.25
    grid: int = 5
    points: int = 3

    def __post_init__(self) -> None:
        if self.replicates < 2:
            raise ValueError(f"summary.replicates={self.replicates}: an interval needs >= 2")
        if self.grid < 5 or self.grid % 2 == 0:
            raise ValueError(
                f"summary.grid={self.grid}: must be odd and >= 5 (the disc must hold the model and "
                "enough points off the axes to fit the cross term)"
            )
        if self.points < 1 or self.batch_size < 1 or self.radius <= 0:
            raise ValueError(
                f"summary.points={self.points}, batch_size={self.batch_size}, radius={self.radius}: "
                "must be >= 1, >= 1 and > 0"
            )


def disc_mask(coords: np.ndarray, radius: float) -> np.ndarray:
    """[j, i] grid entries (beta_j, alpha_i) inside the closed disc of `radius`."""
    alpha, beta = np.meshgrid(coords, coords)
    return alpha**2 + beta**2 <= radius**2 * (1 + 1e-9)


def fit_quadratic(coords: np.ndarray, losses: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The 2 x 2 Hessian of the least-squares quadratic through `losses[j, i]` at
    (coords[i], coords[j]) where `mask`, and the fit's R^2."""
    alpha, beta = np.meshgrid(coords, coords)
    a, b, y = alpha[mask], beta[mask], losses[mask]
    design = np.stack([np.ones_like(a), a, b, 0.5 * a * a, a * b, 0.5 * b * b], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    hessian = np.array([[coef[3], coef[4]], [coef[4], coef[5]]])
    residual = y - design @ coef
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return hessian, r2


def plane_shape(hessian: np.ndarray) -> tuple[float, float]:
    """(curvature, anisotropy) of a symmetric 2 x 2 Hessian: (k1 + k2) / 2 and
    (k1 - k2) / (|k1| + |k2|) (0 when both are 0)."""
    k2, k1 = np.linalg.eigvalsh(hessian)
    scale = abs(k1) + abs(k2)
    return float((k1 + k2) / 2), float((k1 - k2) / scale) if scale > 0 else 0.0


def disc_points(radius: float, count: int, seed: int) -> list[tuple[float, float]]:
    """The centre, then count - 1 points on the circle of `radius` at evenly spaced angles
    turned by an offset drawn from `seed`."""
    offset = np.random.default_rng(seed).uniform(0, 2 * math.pi)
    angles = [offset + 2 * math.pi * k / (count - 1) for k in range(count - 1)] if count > 1 else []
    return [(0.0, 0.0)] + [(radius * math.cos(t), radius * math.sin(t)) for t in angles]


def replicate_measures(
    model: PreTrainedModel,
    batch: FixedBatch,
    d1: Mapping,
    d2: Mapping,
    spec: SummarySpec,
    eigen: EigenSpec,
    seed: int,
) -> dict[str, float]:
    """One replicate's measures (see the module docstring) of `model` on `batch` in the plane
    (d1, d2)."""
    coords = grid_coordinates(spec.grid, spec.radius)
    losses = loss_grid(model, batch, d1, d2, coords)
    mask = disc_mask(coords, spec.radius)
    hessian, r2 = fit_quadratic(coords, losses, mask)
    curvature, anisotropy = plane_shape(hessian)
    origin = losses[len(coords) // 2, len(coords) // 2]
    values = {"curvature": curvature, "anisotropy": anisotropy, "fit_r2": r2}
    values["loss_rise"] = float((losses[mask] - origin).mean())
    cells, start = [], None
    with PlanePerturbation(model, d1, d2) as plane:
        for k, (a, b) in enumerate(disc_points(spec.radius, spec.points, seed)):
            plane.move(a, b)
            with HessianOperator.for_batch(model, batch) as op:
                found = extreme_eigenvalues(op, eigen, start)
                if not found.converged or not math.isfinite(found.lambda_min + found.lambda_max):
                    values["fallbacks"] = values.get("fallbacks", 0) + 1
                    found = extreme_eigenvalues(op, dataclasses.replace(eigen, solver="power"))
            start = found.start
            cells.append(float(convexity(found.lambda_min, found.lambda_max, eigen.eps, eigen.clip)))
            if k == 0:
                values["lambda_max"] = found.lambda_max
    values["convexity"] = float(np.mean(cells))
    return values


def interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1), n and the Student-t interval of the mean
    (`analysis.stats.summary`, the tables' cell)."""
    return dataclasses.asdict(summary(values, level))


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """a - b paired by replicate: the mean difference's interval (as `interval`) and the
    paired t-test's two-sided p-value (1.0 when every difference is 0)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = interval(diff, level)
    out["p"] = float(stats.ttest_1samp(diff, 0.0).pvalue) if np.any(diff != diff[0]) else float(diff[0] == 0)
    return out


def summarize(
    measures: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    compare: Sequence[tuple[str, str]],
) -> dict:
    """Intervals per task, model and measure, and paired differences for the `compare` pairs
    present; `measures[task][model]` lists the replicates' measures in replicate order."""
    out: dict = {}
    for task, models in measures.items():
        per_model = {
            key: {metric: interval([r[metric] for r in reps]) for metric in METRICS}
            for key, reps in models.items()
        }
        pairs = {}
        for first, second in compare:
            if first in models and second in models:
                pairs[f"{first} - {second}"] = {
                    metric: paired([r[metric] for r in models[first]], [r[metric] for r in models[second]])
                    for metric in METRICS
                }
        out[task] = {"models": per_model, "paired": pairs}
    return out


def _cell(stat: Mapping[str, float], digits: int) -> str:
    low, high = stat["ci_low"], stat["ci_high"]
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


DIGITS = {"curvature": 3, "anisotropy": 2, "loss_rise": 4, "fit_r2": 3, "convexity": 3, "lambda_max": 2}


def markdown(intervals: Mapping, titles: Mapping[str, str]) -> str:
    """One table per task: a row per model (mean ± sample std [95% CI], n in the header), then
    the paired differences (with p)."""
    lines = []
    for task, part in intervals.items():
        n = next(iter(next(iter(part["models"].values())).values()))["n"]
        lines += [f"### {task} (n = {n} replicates: direction pair + batch)", ""]
        lines.append("| model | " + " | ".join(METRICS) + " |")
        lines.append("|---|" + "---|" * len(METRICS))
        for key, stat in part["models"].items():
            cells = " | ".join(_cell(stat[m], DIGITS[m]) for m in METRICS)
            lines.append(f"| {titles.get(key, key)} | {cells} |")
        for pair, stat in part["paired"].items():
            first, second = pair.split(" - ")
            label = f"{titles.get(first, first)} − {titles.get(second, second)}"
            cells = " | ".join(f"{_cell(stat[m], DIGITS[m])} p={stat[m]['p']:.3f}" for m in METRICS)
            lines.append(f"| {label} | {cells} |")
        lines.append("")
    return "\n".join(lines)
