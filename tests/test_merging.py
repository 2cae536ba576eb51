"""Merge functions against hand computations (paper eq. 4-5, attraction, re-dense)."""

import pytest
import torch

from sae_merging.merging import functions as F


def test_mixing_ratio_eq5_by_hand():
    # lambda = (s_A + w_A) / ((s_A + w_A) + (s_B + w_B)) = (0.6 + 0.05) / (0.65 + 0.3 + 0.02)
    assert F.mixing_ratio(0.6, 0.05, 0.3, 0.02) == pytest.approx(0.65 / 0.97, abs=1e-12)
    assert F.mixing_ratio(0.0, 0.0, 0.0, 0.0) == 0.5
    assert F.mixing_ratio(0.5, 0.0, 0.0, 0.0) == 1.0


def test_linear_eq4_by_hand():
    a = torch.tensor([[1.0, -2.0], [0.0, 4.0]])
    b = torch.tensor([[3.0, 2.0], [5.0, 0.0]])
    expected = torch.tensor([[0.25 * 1 + 0.75 * 3, 0.25 * -2 + 0.75 * 2], [0.75 * 5, 0.25 * 4]])
    assert torch.allclose(F.linear(a, b, 0.25), expected, atol=1e-6)


def test_attraction_fills_one_sided_zeros_unscaled():
    a = torch.tensor([1.0, 0.0, 2.0, 0.0])
    b = torch.tensor([3.0, 5.0, 0.0, 0.0])
    # both non-zero: 0.25*1 + 0.75*3; zero in A: B's 5; zero in B: A's 2; both zero: 0
    assert torch.allclose(F.attraction(a, b, 0.25), torch.tensor([2.5, 5.0, 2.0, 0.0]), atol=1e-6)


def test_fill_zeros_from_dense_only_where_both_parents_are_zero():
    a, b = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 2.0])
    child = F.linear(a, b, 0.5)
    dense = torch.tensor([7.0, 8.0, 9.0])
    assert torch.equal(F.fill_zeros(child, a, b, dense), torch.tensor([7.0, 0.5, 1.0]))


def test_bfloat16_inputs_merge_in_float32_and_keep_dtype():
    a = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    b = torch.tensor([2.0, 5.0], dtype=torch.bfloat16)
    out = F.linear(a, b, 0.5)
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), torch.tensor([1.5, 4.0]))


def test_elementwise_mergers_into_their_first_input_equal_a_new_output():
    """linear and attraction with out=a (what the child path does with a loaded parent's
    tensor) give the new-output result bit for bit, across several parts."""
    from sae_merging.merging import functions

    g = torch.Generator().manual_seed(0)
    a = (torch.randn(3, 1000, generator=g) * 0.02).bfloat16()
    b = (torch.randn(3, 1000, generator=g) * 0.02).bfloat16()
    a[:, ::3], b[:, ::4] = 0.0, 0.0
    for merger in (functions.linear, functions.attraction):
        assert merger.elementwise  # declared by the merger: the child path merges it by chunks
        expected = merger(a, b, 0.37)
        target = a.clone()
        old = functions.CHUNK, functions.SUB_CHUNK
        functions.CHUNK, functions.SUB_CHUNK = 256, 100
        try:
            got = merger(target, b, 0.37, out=target)
            assert got.data_ptr() == target.data_ptr()
            assert torch.equal(got, merger(a, b, 0.37)) and torch.equal(got, expected)
        finally:
            functions.CHUNK, functions.SUB_CHUNK = old
