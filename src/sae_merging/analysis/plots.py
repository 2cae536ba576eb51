"""Figures with one panel per model and one colour scale per figure, so panels compare directly.

- loss contour (filled contours + contour lines; the model itself is the `+` at the origin),
- loss surface (3-D; same z range and colours in every panel),
- convexity heatmap (fixed scale [0, clip]; cells where the eigen-solver did not converge
  are crossed).
A loss spanning orders of magnitude over the plane is drawn on a log scale (`loss_scale`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LOSS_SCALES = ("log", "linear")
AXIS_LABELS = (r"$\alpha$ (direction 1)", r"$\beta$ (direction 2)")


@dataclass(frozen=True)
class Panel:
    """One model's grid: `values[j, i]` at `(coords[i], coords[j])`."""

    title: str
    coords: np.ndarray
    values: np.ndarray
    flagged: np.ndarray | None = None  # cells to cross out (e.g. solver did not converge)


def _row(n: int, projection: str | None = None) -> tuple[Figure, list]:
    fig = plt.figure(figsize=(3.6 * n + 1.0, 4.3), layout="constrained")
    axes = [fig.add_subplot(1, n, k + 1, projection=projection) for k in range(n)]
    return fig, axes


def _loss_norm(panels: Sequence[Panel], scale: str) -> colors.Normalize:
    values = np.concatenate([p.values[np.isfinite(p.values)].ravel() for p in panels])
    if values.size == 0:
        return colors.Normalize(0.0, 1.0)
    low, high = float(values.min()), float(values.max())
    if scale == "log":
        low = max(low, high * 1e-6, 1e-12)
        return colors.LogNorm(low, max(high, low * 1.0001))
    return colors.Normalize(low, max(high, low + 1e-12))


def _levels(norm: colors.Normalize, count: int) -> np.ndarray:
    if isinstance(norm, colors.LogNorm):
        return np.geomspace(norm.vmin, norm.vmax, count)
    return np.linspace(norm.vmin, norm.vmax, count)


def loss_contour(panels: Sequence[Panel], task: str, subtitle: str, scale: str = "log", levels: int = 30):
    if scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale={scale!r}; valid: {', '.join(LOSS_SCALES)}")
    norm = _loss_norm(panels, scale)
    steps = _levels(norm, levels)
    fig, axes = _row(len(panels))
    mappable = None
    for ax, panel in zip(axes, panels):
        a, b = np.meshgrid(panel.coords, panel.coords)
        z = np.clip(panel.values, norm.vmin, norm.vmax)
        mappable = ax.contourf(a, b, z, levels=steps, norm=norm, cmap="viridis", extend="neither")
        ax.contour(a, b, z, levels=steps[::3], norm=norm, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot(0, 0, "+", color="red", markersize=10, markeredgewidth=1.5)
        _label(ax, panel, task)
    bar = fig.colorbar(mappable, ax=axes, shrink=0.9, label=f"loss on {task}")
    if scale == "log":
        _log_ticks(bar, norm)
    fig.suptitle(f"Loss landscape on {task}\n{subtitle}")
    return fig


def _log_ticks(bar, norm: colors.LogNorm) -> None:
    """Labelled ticks on a log colour bar: decades when the range spans one or more, else five
    values spread evenly in log space (a decade locator labels nothing inside one decade)."""
    if norm.vmax / norm.vmin >= 10:
        bar.locator = ticker.LogLocator()
        bar.formatter = ticker.LogFormatterSciNotation()
        bar.update_ticks()
        return
    ticks = np.geomspace(norm.vmin, norm.vmax, 5)
    bar.set_ticks(ticks, labels=[f"{v:.3g}" for v in ticks])
    bar.ax.minorticks_off()  # (the log axis' own minor labels would mix in)


def loss_surface(panels: Sequence[Panel], task: str, subtitle: str, scale: str = "log"):
    if scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale={scale!r}; valid: {', '.join(LOSS_SCALES)}")
    norm = _loss_norm(panels, scale)
    log = scale == "log"
    transform = np.log10 if log else (lambda x: x)
    z_range = (transform(norm.vmin), transform(norm.vmax))
    fig, axes = _row(len(panels), projection="3d")
    for ax, panel in zip(axes, panels):
        a, b = np.meshgrid(panel.coords, panel.coords)
        values = np.clip(panel.values, norm.vmin, norm.vmax)
        ax.plot_surface(
            a, b, transform(values), facecolors=plt.cm.viridis(norm(values)), shade=False, linewidth=0
        )
        ax.set_zlim(*z_range)
        if log:  # the height is log10(loss); its ticks say the loss itself, as the colour bar does
            ax.zaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{10**v:.3g}"))
        ax.set_zlabel("loss (log scale)" if log else "loss", labelpad=2)
        ax.set_box_aspect(None, zoom=0.85)  # room for the z label inside the panel
        ax.view_init(elev=30, azim=-60)
        _label(ax, panel, task)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    bar = fig.colorbar(mappable, ax=axes, shrink=0.7, pad=0.08, label=f"loss on {task}")
    if log:
        _log_ticks(bar, norm)
    fig.suptitle(f"Loss surface on {task}\n{subtitle}")
    return fig


def convexity_map(panels: Sequence[Panel], task: str, subtitle: str, clip: float = 0.5):
    fig, axes = _row(len(panels))
    mappable = None
    for ax, panel in zip(axes, panels):
        mappable = ax.pcolormesh(
            panel.coords, panel.coords, panel.values, vmin=0.0, vmax=clip, cmap="magma", shading="nearest"
        )
        if panel.flagged is not None and panel.flagged.any():
            j, i = np.nonzero(panel.flagged)
            ax.plot(panel.coords[i], panel.coords[j], "x", color="cyan", markersize=7, label="not converged")
            ax.legend(loc="upper right", fontsize=7)
        _label(ax, panel, task)
    label = r"convexity $|\lambda_{min}| / (|\lambda_{max}| + \epsilon)$"
    fig.colorbar(mappable, ax=axes, shrink=0.9, label=label)
    fig.suptitle(f"Hessian convexity map on {task}\n{subtitle}")
    return fig


def _label(ax, panel: Panel, task: str) -> None:
    ax.set_title(f"{panel.title}\non {task}")
    ax.set_xlabel(AXIS_LABELS[0])
    ax.set_ylabel(AXIS_LABELS[1])


def save_figure(fig: Figure, stem: Path, formats: Sequence[str], dpi: int = 150) -> list[Path]:
    """Write `stem.<format>` for each format and close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    plt.close(fig)
    return paths
