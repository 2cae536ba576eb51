"""Pure per-tensor merge functions.

Each takes tensors of one parameter (one per model) and returns the merged tensor; none keeps
state, so a model of any size merges by streaming tensors through them one at a time. All
arithmetic happens in float32 and the result takes the first input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from sae_merging.utils import kernels

CHUNK = 1 << 20  # entries per step of the elementwise merges (float32 temporaries of a few MB)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def _elementwise(
    fn: Callable[..., torch.Tensor],
    dtype: torch.dtype,
    *tensors: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """fn (elementwise) over CHUNK-entry parts of same-shape tensors, each part's float32 result
    cast into a `dtype` output: the same values as fn over whole tensors, bit for bit, with
    temporaries of one part instead of several float32 copies of the tensor. `out` (contiguous,
    of `dtype`) may be one of the inputs: each part is read whole before it is overwritten."""
    if out is None:
        out = torch.empty(tensors[0].shape, dtype=dtype, device=tensors[0].device)
    elif out.dtype != dtype or out.shape != tensors[0].shape or not out.is_contiguous():
        raise ValueError(
            f"out: {out.dtype} {tuple(out.shape)} is not a contiguous {dtype} of the inputs' shape"
        )
    flat, parts = out.view(-1), [t.reshape(-1) for t in tensors]
    for start in range(0, flat.numel(), CHUNK):
        flat[start : start + CHUNK] = fn(*(p[start : start + CHUNK] for p in parts))
    return out


def mixing_ratio(score_a: float, weight_a: float, score_b: float, weight_b: float) -> float:
    """Paper eq. 5: lambda = (s_A + w_A) / ((s_A + w_A) + (s_B + w_B)), the share of parent A.

    When both sides are zero (two failing, dense parents) the parents share equally.
    """
    a, b = score_a + weight_a, score_b + weight_b
    if a + b <= 0:
        return 0.5
    return a / (a + b)


def _elementwise_merger(merger: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Declares a merger elementwise: it takes `out=` (which may be its first input), so a
    child is merged chunk by chunk, into the tensor it reads (`merging.child`)."""
    merger.elementwise = True
    return merger


SUB_CHUNK = 1 << 18  # entries per float32 step of `linear` (buffers that stay in a core's cache)


@_elementwise_merger
def linear(a: torch.Tensor, b: torch.Tensor, ratio: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eq. 4: ratio * A + (1 - ratio) * B (into `out` when given: it may be `a`), in
    float32 steps of SUB_CHUNK entries through two reused buffers: the ops and roundings of
    `ratio * A32 + (1 - ratio) * B32`, bit for bit, without a float32 temporary per op. bf16 on
    the CPU goes through one compiled loop where it could be built (`utils.kernels`, the same
    bits; a NaN result's block is left to torch, whose bf16 NaN pattern depends on its path)."""
    if out is None:
        out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    elif out.dtype != a.dtype or out.shape != a.shape or not out.is_contiguous():
        raise ValueError(
            f"out: {out.dtype} {tuple(out.shape)} is not a contiguous {a.dtype} of the inputs' shape"
        )
    flat, flat_a, flat_b = out.view(-1), a.reshape(-1), b.reshape(-1)
    size = flat.numel()  # (another shape of b: torch broadcasts it; the compiled loop does not)
    done = kernels.linear_bf16(flat_a, flat_b, ratio, flat) if a.shape == b.shape else 0
    a32 = torch.empty(min(SUB_CHUNK, size - done), dtype=torch.float32, device=out.device)
    b32 = torch.empty_like(a32)
    for start in range(done, size, SUB_CHUNK):
        stop = min(start + SUB_CHUNK, size)
        part_a, part_b = a32[: stop - start], b32[: stop - start]
        part_a.copy_(flat_a[start:stop]).mul_(ratio)
        part_b.copy_(flat_b[start:stop]).mul_(1.0 - ratio)
        flat[start:stop].copy_(part_a.add_(part_b))
    return out


def _attraction(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    merged = ratio * _f32(a) + (1.0 - ratio) * _f32(b)
    merged = torch.where(a == 0, _f32(b), merged)
    return torch.where(b == 0, _f32(a), merged)


@_elementwise_merger
def attraction(
    a: torch.Tensor, b: torch.Tensor, ratio: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4 where both parents are non-zero; where exactly one parent is zero, the other
    parent's value is taken unscaled (a zero of one parent "attracts" the other's weight,
    paper section 2.3); zero where both are zero (into `out` when given: it may be `a`)."""
    return _elementwise(lambda a, b: _attraction(a, b, ratio), a.dtype, a, b, out=out)


def fill_zeros(
    child: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dense: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Re-dense from the original dense model: positions zero in both parents take `dense`
    (into `out` when given: it may be `child`)."""
    return _elementwise(
        lambda c, a, b, d: torch.where((a == 0) & (b == 0), d.to(c.dtype), c),
        child.dtype,
        child,
        a,
        b,
        dense,
        out=out,
    )


def task_arithmetic(
    base: torch.Tensor, experts: Sequence[torch.Tensor], scale: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """theta_0 + scale * sum_i w_i (theta_i - theta_0) (Ilharco et al. 2023; mergekit's
    `task_arithmetic` with weights w_i, default 1)."""
    weights = weights or [1.0] * len(experts)
    base32 = _f32(base)
    delta = sum(w * (_f32(e) - base32) for w, e in zip(weights, experts, strict=True))
    return (base32 + scale * delta).to(base.dtype)


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """sum_i w_i theta_i / sum_i w_i (model soup; mergekit's `linear` with normalize)."""
    weights = list(weights or [1.0] * len(tensors))
    total = sum(weights)
    if total == 0:
        raise ValueError("weighted_average: weights sum to zero")
    merged = sum(w * _f32(t) for w, t in zip(weights, tensors, strict=True)) / total
    return merged.to(tensors[0].dtype)


def _stacked_weights(weights: Sequence[float] | None, count: int, ndim: int) -> torch.Tensor:
    """Per-model weights shaped to broadcast against a stack of `count` tensors of rank `ndim`."""
    values = list(weights) if weights is not None else [1.0] * count
    if len(values) != count:
        raise ValueError(f"{len(values)} weights for {count} models")
    return torch.tensor(values, dtype=torch.float32).reshape(count, *([1] * ndim))


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = int(density * n) entries of largest |delta| (mergekit's `magnitude`
    sparsification, TIES's trim step); density >= 1 keeps everything, k = 0 keeps nothing."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    flat = delta.reshape(-1)
    k = int(density * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=delta.device)
    if k > 0:
        mask[torch.topk(flat.abs(), k, sorted=False).indices] = True
    return mask.reshape(delta.shape)


def ties(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    density: float,
    scale: float,
    weights: Sequence[float] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) as mergekit's `ties`: trim each task vector to its top
    `density` by magnitude, elect per entry the sign of the sum of the kept weighted deltas
    (+ on a zero sum), and add `scale` times the disjoint mean: the kept weighted deltas that
    agree with the elected sign, divided by the weights of those agreeing (`normalize`,
    mergekit's default; 0 where none agrees). With density 1 and no sign conflict this is task
    arithmetic with the weights normalised to sum to 1, or plain task arithmetic when
    `normalize` is off."""
    base32 = _f32(base)
    w = _stacked_weights(weights, len(experts), base.dim()).to(base.device)
    deltas = torch.stack([_f32(e) - base32 for e in experts])
    deltas = deltas * torch.stack([magnitude_mask(d, density) for d in deltas])
    weighted = deltas * w
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0)
    agree = weighted.sign() == elected
    merged = (weighted * agree).sum(dim=0)
    if normalize:
        divisor = (w * agree).sum(dim=0)
        merged = merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return (base32 + scale * merged).to(base.dtype)


def drop_and_rescale(
    delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True
) -> torch.Tensor:
    """DARE's step (Yu et al. 2024): keep each entry with probability `density` (a Bernoulli
    draw from `generator`), scale the kept ones by 1/density so the expectation is unchanged."""
    if not 0 < density <= 1:
        raise ValueError(f"DARE density={density}: must be in (0, 1]")
    keep = torch.rand(delta.shape, generator=generator, device=generator.device) < density
    kept = delta * keep.to(delta.device)
    return kept / density if rescale else kept


def dare(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    density: float,
    scale: float,
    generator: torch.Generator,
    weights: Sequence[float] | None = None,
    rescale: bool = True,
) -> torch.Tensor:
    """DARE + task arithmetic (mergekit's `dare_linear`): theta_0 + scale * sum_i w_i
    DARE(theta_i - theta_0). The experts' masks are drawn one after another from `generator`,
    so a seeded generator gives the same model every time."""
    base32 = _f32(base)
    weights = list(weights) if weights is not None else [1.0] * len(experts)
    deltas = [drop_and_rescale(_f32(e) - base32, density, generator, rescale) for e in experts]
    delta = sum(w * d for w, d in zip(weights, deltas, strict=True))
    return (base32 + scale * delta).to(base.dtype)


# |cos| above which two tensors count as parallel and SLERP falls back to LERP (mergekit's value)
PARALLEL_COSINE = 0.9995


def cosine(pairs) -> float:
    """cos of the angle between two vectors given as (a, b) tensor pairs (one pair: two tensors;
    several: the concatenations of their flattened tensors), accumulated in float64; 1.0 when
    either vector is zero."""
    dot = norm_a = norm_b = 0.0
    for a, b in pairs:
        a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
        dot += float(a64 @ b64)
        norm_a += float(a64 @ a64)
        norm_b += float(b64 @ b64)
    norms = math.sqrt(norm_a) * math.sqrt(norm_b)
    return dot / norms if norms > 0 else 1.0


def slerp_weights(cos: float, t: float, min_sin: float | None = None) -> tuple[float, float]:
    """SLERP's weights (of a, of b) at t for two vectors at angle arccos(cos):
    (sin((1-t) w) / sin(w), sin(t w) / sin(w)); (1 - t, t) when the angle is ill-conditioned:
    |cos| > PARALLEL_COSINE by default, or sin(w) <= `min_sin` when given (natural_niches
    uses 1e-6)."""
    omega = math.acos(max(-1.0, min(1.0, cos)))
    sin_omega = math.sin(omega)
    degenerate = sin_omega <= min_sin if min_sin is not None else abs(cos) > PARALLEL_COSINE
    if degenerate:
        return 1.0 - t, t
    return math.sin((1.0 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega


def slerp(
    a: torch.Tensor, b: torch.Tensor, t: float, cos: float | None = None, min_sin: float | None = None
) -> torch.Tensor:
    """Spherical interpolation from `a` (t = 0) to `b` (t = 1), the tensor taken as one flat
    vector: sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b with w the angle between them (or the
    angle `cos` gives, e.g. that of whole flattened models). Near-parallel (or anti-parallel)
    and zero tensors fall back to (1-t) a + t b, where the angle is ill-conditioned."""
    a32, b32 = _f32(a), _f32(b)
    weight_a, weight_b = slerp_weights(cosine([(a32, b32)]) if cos is None else cos, t, min_sin)
    return (weight_a * a32 + weight_b * b32).to(a.dtype)
