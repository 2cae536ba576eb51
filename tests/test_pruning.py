"""Magnitude pruning: exact zero counts, equality with a sort-based reference, skip list."""

import pytest
import torch

from sae_merging.pruning.magnitude import MagnitudePruner, kth_smallest_magnitude


def _model(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(20, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        # many ties, no zeros: values in {-3, -2, -1, 1, 2, 3}
        "model.layers.0.mlp.up_proj.weight": (
            torch.randint(1, 4, (16, 8), generator=g) * (torch.randint(0, 2, (16, 8), generator=g) * 2 - 1)
        ).float(),
        "model.layers.0.input_layernorm.weight": torch.ones(8),
        "model.norm.weight": torch.ones(8),
        "lm_head.weight": torch.randn(20, 8, generator=g),
        "model.layers.0.mlp.down_proj.bias": torch.randn(8, generator=g),
    }


def _sort_reference(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Zero the k smallest |w| of the concatenation (stable sort: ties by position)."""
    flat = torch.cat([t.float().abs().reshape(-1) for t in tensors])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    out, start = [], 0
    for t in tensors:
        out.append(t * keep[start : start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5, 0.6, 0.9, 0.99])
def test_local_zero_counts_and_reference(rate):
    model = _model()
    pruner = MagnitudePruner("local")
    pruned = pruner.prune(model, rate)
    for name, tensor in model.items():
        if pruner.prunable(name):
            assert int((pruned[name] == 0).sum()) == round(rate * tensor.numel())
            assert torch.equal(pruned[name], _sort_reference([tensor], round(rate * tensor.numel()))[0])
        else:
            assert pruned[name] is tensor


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5, 0.6, 0.9, 0.99])
def test_global_matches_sort_reference_exactly(rate):
    model = _model()
    pruner = MagnitudePruner("global")
    names = [n for n in model if pruner.prunable(n)]
    assert names == ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    k = round(rate * sum(model[n].numel() for n in names))
    pruned = pruner.prune(model, rate)
    assert sum(int((pruned[n] == 0).sum()) for n in names) == k
    for name, expected in zip(names, _sort_reference([model[n] for n in names], k)):
        assert torch.equal(pruned[name], expected)


def test_input_untouched_and_bfloat16():
    model = {k: v.to(torch.bfloat16) for k, v in _model(1).items()}
    before = {k: v.clone() for k, v in model.items()}
    pruned = MagnitudePruner("global").prune(model, 0.5)
    assert all(torch.equal(model[k], before[k]) for k in model)
    assert pruned["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def test_kth_smallest_magnitude_on_known_values():
    tensors = [torch.tensor([-5.0, 1.0, 0.0]), torch.tensor([2.0, -1.0, 3.0])]
    assert kth_smallest_magnitude(lambda: tensors, 1) == (0.0, 0)
    assert kth_smallest_magnitude(lambda: tensors, 3) == (1.0, 1)  # two ones, one zero below
    assert kth_smallest_magnitude(lambda: tensors, 6) == (5.0, 5)


def test_bad_granularity_is_refused():
    with pytest.raises(ValueError, match="granularity"):
        MagnitudePruner("per-row")
