"""Sparsity measures on tensors whose answer is known."""

import math

import pytest
import torch

from sae_merging.sparsity.measures import SparsityStats, hoyer, pooled, zero_count


def test_zero_count():
    assert zero_count(SparsityStats.of(torch.tensor([0.0, 1.0, 0.0, -2.0]))) == 0.5
    assert zero_count(SparsityStats.of(torch.ones(10))) == 0.0


def test_hoyer_extremes_and_a_hand_value():
    assert hoyer(SparsityStats.of(torch.full((16,), -3.0))) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(16)
    one_hot[3] = 7.0
    assert hoyer(SparsityStats.of(one_hot)) == pytest.approx(1.0)
    assert hoyer(SparsityStats.of(torch.zeros(5))) == 1.0
    x = torch.tensor([3.0, 4.0, 0.0, 0.0])  # L1 = 7, L2 = 5, n = 4
    assert hoyer(SparsityStats.of(x)) == pytest.approx((2 - 7 / 5) / (2 - 1))


def test_pooling_equals_concatenation():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(7, generator=g), torch.zeros(3), torch.randn(5, generator=g)]
    whole = SparsityStats.of(torch.cat(parts))
    combined = pooled(SparsityStats.of(p) for p in parts)
    assert combined.count == whole.count and combined.zeros == whole.zeros
    assert math.isclose(hoyer(combined), hoyer(whole), rel_tol=1e-6)
    assert zero_count(combined) == 3 / 15


def test_zero_count_scoring_reads_counts_only():
    """zero_count (as Hydra hands it over, a bare partial) reads only the counts, which equal
    the full statistics' counts; other measures still get the sums."""
    from functools import partial

    from sae_merging.sparsity.scoring import SparsityScoring

    t = torch.tensor([0.0, -0.0, 1.5, -2.0, 0.0], dtype=torch.bfloat16)
    assert SparsityStats.counts(t) == SparsityStats(5, 3)
    assert zero_count(SparsityStats.counts(t)) == zero_count(SparsityStats.of(t)) == 0.6
    assert SparsityScoring(partial(zero_count)).stats(t) == SparsityStats(5, 3)
    assert SparsityScoring(partial(hoyer)).stats(t) == SparsityStats.of(t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_zero_counts_by_the_counting_kernel_equal_count_nonzero(dtype):
    """SparsityStats.counts (the pruner's counting kernel for 16- and 32-bit floats) counts the
    zeros torch.count_nonzero leaves: +0 and -0 are zeros, NaN and subnormals are not."""
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(5000, generator=g) * 0.02).to(dtype)
    t[torch.rand(5000, generator=g) < 0.6] = 0.0
    t[::7] = -0.0
    t[3], t[5], t[11] = float("nan"), float("inf"), torch.finfo(dtype).tiny / 2
    t = t.reshape(50, 100)[:, ::2]  # not contiguous
    assert SparsityStats.counts(t) == SparsityStats(t.numel(), t.numel() - int(torch.count_nonzero(t)))
