"""Extreme Hessian eigenvalues of a loss and the convexity proxy of the paper's Fig. 3-4.

`lambda_max` / `lambda_min` are the largest / smallest *algebraic* eigenvalues of the Hessian
of the loss on one fixed batch, and

    convexity = |lambda_min| / (|lambda_max| + eps), clipped to [0, clip] (paper: 0.5),

so a locally convex point (lambda_min >= 0 small) is dark and balanced positive and negative
curvature is bright. Hessian-vector products come from pyhessian, which builds the gradient
graph once per point (double backward: models must use eager attention on CPU; SDPA has no
double backward there). Two solvers:

- `lanczos` (default): ARPACK's implicitly restarted Lanczos, `scipy.sparse.linalg.eigsh` on a
  LinearOperator of HVPs with `which="BE"`, which gets both ends of the spectrum from one
  Krylov space. It keeps `ncv` vectors of the parameter count in host memory: right for the
  lab and small models. A start vector (the last point's eigenvectors) can be passed in.
- `power`: power iteration for the eigenvalue of largest magnitude, then power iteration on
  the shifted operator `H - mu*I`, whose dominant eigenvalue is the other end of the spectrum
  minus mu. Only three vectors, all on the model's device: the path for billion-parameter
  models on a GPU, at the price of more HVPs when the spectrum's ends are not well separated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from pyhessian import hessian as PyHessian
from pyhessian.utils import group_product, hessian_vector_product, normalization
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from transformers import PreTrainedModel

from sae_merging.analysis.loss_plane import FixedBatch, LossAdapter, PlanePerturbation, plane_points

SOLVERS = ("lanczos", "power")


@dataclass(frozen=True)
class EigenSpec:
    """How extreme eigenvalues are computed and turned into convexity.

    `tol`: relative tolerance (ARPACK's residual test; for `power`, the change of the Rayleigh
    quotient between iterations). `ncv`: Lanczos vectors; `max_restarts`: ARPACK restarts.
    `power_iters`: iterations per end for `power`. `seed`: random start vectors."""

    solver: str = "lanczos"
    tol: float = 5e-2
    ncv: int = 8
    max_restarts: int = 20
    power_iters: int = 100
    eps: float = 1e-6
    clip: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}; valid: {', '.join(SOLVERS)}")


@dataclass
class Extremes:
    lambda_min: float
    lambda_max: float
    hvps: int
    converged: bool
    start: np.ndarray | None = None  # a start vector for a neighbouring point (lanczos)


def convexity(lambda_min: np.ndarray | float, lambda_max: np.ndarray | float, eps: float, clip: float):
    """`|lambda_min| / (|lambda_max| + eps)` clipped to [0, clip] (NaN stays NaN)."""
    ratio = np.abs(lambda_min) / (np.abs(lambda_max) + eps)
    return np.clip(ratio, 0.0, clip)


class HessianOperator:
    """Hessian-vector products of `criterion(module(inputs), targets)` at the module's current
    weights, through pyhessian. Use it as a context manager: on exit the parameters' `.grad`
    (which holds the gradient graph) is cleared, so the graph is freed and the next point does
    not accumulate into it."""

    def __init__(
        self,
        module: nn.Module,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
    ) -> None:
        module.zero_grad(set_to_none=True)
        cuda = inputs.is_cuda  # pyhessian moves the batch with `.cuda()`: keep it on its device
        with torch.cuda.device(inputs.device) if cuda else nullcontext(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            self._hessian = PyHessian(module, criterion, data=(inputs, targets), cuda=cuda)
        self.params = self._hessian.params
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.device = self.params[0].device
        self.hvps = 0

    @classmethod
    def for_batch(cls, model: PreTrainedModel, batch: FixedBatch) -> HessianOperator:
        adapter = LossAdapter(model)
        return cls(adapter, adapter.criterion, batch.inputs, batch.labels)

    def hvp(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        self.hvps += 1
        return list(hessian_vector_product(self._hessian.gradsH, self.params, vectors))

    def matvec(self, flat: np.ndarray) -> np.ndarray:
        """H @ v for a flat float64 vector (the LinearOperator's product)."""
        v = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64).reshape(-1))
        v = v.to(device=self.device, dtype=self.params[0].dtype)
        parts = [part.view_as(p) for part, p in zip(torch.split(v, self.sizes), self.params)]
        hv = self.hvp(parts)
        return torch.cat([h.reshape(-1) for h in hv]).double().cpu().numpy()

    def linear_operator(self) -> LinearOperator:
        return LinearOperator((self.dim, self.dim), matvec=self.matvec, dtype=np.float64)

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.grad = None
        self._hessian = None


def extreme_eigenvalues(op: HessianOperator, spec: EigenSpec, start: np.ndarray | None = None) -> Extremes:
    """Smallest and largest eigenvalue of the operator's Hessian (see the module docstring)."""
    before = op.hvps
    if spec.solver == "lanczos":
        result = _lanczos(op, spec, start)
    else:
        result = _power(op, spec)
    result.hvps = op.hvps - before
    return result


def _lanczos(op: HessianOperator, spec: EigenSpec, start: np.ndarray | None) -> Extremes:
    if start is None:
        start = np.random.default_rng(spec.seed).standard_normal(op.dim)
    ncv = min(max(spec.ncv, 3), op.dim)
    try:
        values, vectors = eigsh(
            op.linear_operator(), k=2, which="BE", tol=spec.tol, ncv=ncv, maxiter=spec.max_restarts, v0=start
        )
        converged = True
    except ArpackNoConvergence as error:  # keep what did converge; the cell is flagged
        values, vectors, converged = error.eigenvalues, error.eigenvectors, False
    if len(values) < 2:
        return Extremes(float("nan"), float("nan"), 0, False)
    order = np.argsort(values)
    low, high = vectors[:, order[0]], vectors[:, order[-1]]
    return Extremes(float(values[order[0]]), float(values[order[-1]]), 0, converged, low + high)


def _power(op: HessianOperator, spec: EigenSpec) -> Extremes:
    generator = torch.Generator().manual_seed(spec.seed)
    dominant, ok_first = _power_iteration(op, 0.0, spec, generator)
    shifted, ok_second = _power_iteration(op, dominant, spec, generator)
    other = shifted + dominant
    return Extremes(min(dominant, other), max(dominant, other), 0, ok_first and ok_second)


def _power_iteration(
    op: HessianOperator, shift: float, spec: EigenSpec, generator: torch.Generator
) -> tuple[float, bool]:
    """Dominant eigenvalue of `H - shift*I` (pyhessian's power iteration, with a shift)."""
    v = normalization([torch.randn(p.shape, generator=generator).to(p) for p in op.params])
    value = None
    for _ in range(spec.power_iters):
        hv = [h - shift * x for h, x in zip(op.hvp(v), v)] if shift else op.hvp(v)
        new = group_product(hv, v).item()
        v = normalization(hv)
        if value is not None and abs(new - value) <= spec.tol * (abs(value) + 1e-12):
            return new, True
        value = new
    return value, False


def convexity_grid(
    model: PreTrainedModel,
    batch: FixedBatch,
    d1: Mapping[str, torch.Tensor],
    d2: Mapping[str, torch.Tensor],
    coords: np.ndarray,
    spec: EigenSpec,
    step: Callable[[], None] = lambda: None,
) -> dict[str, np.ndarray]:
    """Extreme eigenvalues and convexity at every `(alpha_i, beta_j)`; entries `[j, i]`.

    Points are visited in serpentine order and the Lanczos solver starts from the previous
    point's eigenvectors, which saves HVPs on a smooth landscape."""
    shape = (len(coords), len(coords))
    grids = {
        "lambda_min": np.full(shape, np.nan),
        "lambda_max": np.full(shape, np.nan),
        "hvps": np.zeros(shape, dtype=np.int64),
        "converged": np.zeros(shape, dtype=bool),
    }
    start = None
    with PlanePerturbation(model, d1, d2) as plane:
        for j, i in plane_points(coords, coords):
            plane.move(coords[i], coords[j])
            with HessianOperator.for_batch(model, batch) as op:
                found = extreme_eigenvalues(op, spec, start)
            start = found.start
            grids["lambda_min"][j, i], grids["lambda_max"][j, i] = found.lambda_min, found.lambda_max
            grids["hvps"][j, i], grids["converged"][j, i] = found.hvps, found.converged
            step()
    grids["convexity"] = convexity(grids["lambda_min"], grids["lambda_max"], spec.eps, spec.clip)
    return grids
