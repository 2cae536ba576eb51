"""Magnitude pruning: exact zero counts, equality with a sort-based reference, skip list."""

import pytest
import torch

from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner, kth_smallest_magnitude
from sae_merging.utils.tensorfiles import LazyTensors


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


# --- the streaming threshold: sampled brackets, chunked passes, exact ties ----------------------


def _prune_like_reference(tensors: list[torch.Tensor], rate: float) -> None:
    """Global pruning of `tensors` equals the stable-sort reference, entry for entry."""
    model = {f"layers.{i}.weight": t for i, t in enumerate(tensors)}
    k = round(rate * sum(t.numel() for t in tensors))
    pruned = MagnitudePruner("global", skip=()).prune(model, rate)
    for name, expected in zip(model, _sort_reference(tensors, k)):
        assert pruned[name].dtype == model[name].dtype
        assert torch.equal(pruned[name], expected), name
    assert sum(int((pruned[n] == 0).sum()) for n in model) >= k


def _weights(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Two tensors of different scales, some entries already zero, and a coarse-grid part
    (many exact ties)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(60, 50, generator=g) * 0.02
    first[:5] = 0
    grid = (torch.randint(-4, 5, (40, 30), generator=g) * 0.01).float()
    second = torch.cat([torch.randn(30, 30, generator=g) * 0.05, grid])
    return [first.to(dtype), second.to(dtype)]


@pytest.fixture
def streaming_scale(monkeypatch):
    """Chunks and samples much smaller than the tensors, so sampled brackets and chunk-split
    ties are exercised on small inputs."""
    monkeypatch.setattr(magnitude, "CHUNK", 64)
    monkeypatch.setattr(magnitude, "SAMPLE", 128)
    monkeypatch.setattr(magnitude, "SAMPLE_BLOCK", 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5, 0.6, 0.97, 1.0])
def test_sampled_threshold_matches_sort_reference(streaming_scale, dtype, rate):
    _prune_like_reference(_weights(dtype), rate)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_many_ties_and_existing_zeros(streaming_scale, dtype):
    g = torch.Generator().manual_seed(3)
    ties = [(torch.randint(-2, 3, (50, 40), generator=g) * 0.5).to(dtype) for _ in range(3)]  # 40% zeros
    for rate in (0.2, 0.4, 0.41, 0.7, 0.99):
        _prune_like_reference(ties, rate)


def test_mixed_dtypes_compare_as_float32(streaming_scale):
    g = torch.Generator().manual_seed(4)
    tensors = [torch.randn(40, 40, generator=g).bfloat16(), torch.randn(30, 30, generator=g).double()]
    for rate in (0.3, 0.8):
        _prune_like_reference(tensors, rate)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_missed_brackets_are_narrowed_exactly(streaming_scale, monkeypatch, dtype):
    """A sample that misses the threshold (no spread, tiny candidate budget) costs passes,
    never exactness."""
    monkeypatch.setattr(magnitude, "SPREAD", 0.0)
    monkeypatch.setattr(magnitude, "MAX_CANDIDATES", 50)
    for rate in (0.1, 0.6, 0.9):
        _prune_like_reference(_weights(dtype, seed=5), rate)


def test_plan_is_order_independent_and_streams(streaming_scale, tmp_path):
    """Tensors read lazily from a mapped file, planned once, pruned in reverse order, equal the
    in-memory result; the source is read only through the callable."""
    from safetensors.torch import save_file

    from sae_merging.utils.tensorfiles import TensorFile

    model = {f"layers.{i}.weight": t for i, t in enumerate(_weights(torch.bfloat16, seed=6))}
    save_file(model, str(tmp_path / "m.safetensors"))
    pruner = MagnitudePruner("global", skip=())
    with TensorFile(tmp_path / "m.safetensors") as file:
        names = file.names()
        calls = []

        def views():
            calls.append(1)
            return (file.view(n) for n in names)

        plan = pruner.plan(views, 0.6, [file.numel(n) for n in names])
        backwards = {n: plan.apply(i, file.view(n)) for i, n in reversed(list(enumerate(names)))}
        expected = pruner.prune({n: file.view(n) for n in names}, 0.6)
    assert len(calls) == 2  # one sampling pass, one counting pass
    assert all(torch.equal(backwards[n], expected[n]) for n in names)
    assert sum(cut.zeros for cut in plan.cuts) == sum(int((t == 0).sum()) for t in expected.values())


def test_threshold_reports_per_tensor_counts():
    tensors = [torch.tensor([3.0, -1.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, -1.0])]
    threshold = magnitude.kth_magnitude(lambda: tensors, 3)
    assert threshold.space.value(threshold.key) == 1.0
    assert threshold.below == (1, 0) and threshold.ties == (2, 2)
    cuts = threshold.cuts(3)
    assert [c.quota for c in cuts] == [2, 0]  # ties go to the first tensor first
    assert [c.zeros for c in cuts] == [3, 0]


@pytest.mark.parametrize("granularity", ["local", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_task_vector_target_keeps_base_and_unpruned_deltas_exactly(granularity, dtype):
    base = {n: t.to(dtype) for n, t in _model(1).items()}
    model = {n: (t + 0.1 * _model(2)[n]).to(dtype) for n, t in base.items()}
    rate = 0.4
    pruner = MagnitudePruner(granularity, target="task_vector").with_base(base)
    pruned = pruner.prune(model, rate)
    deltas = {n: model[n].float() - base[n].float() for n in model}
    # the same positions a weights-pruner picks on the task vectors themselves
    reference = MagnitudePruner(granularity).prune(deltas, rate)
    changed = 0
    for name, tensor in model.items():
        if not pruner.prunable(name):
            assert pruned[name] is tensor
            continue
        reset = (reference[name] == 0) & (deltas[name] != 0)
        assert torch.equal(pruned[name][reset], base[name][reset])  # the base's weights, bit for bit
        assert torch.equal(pruned[name][~reset], tensor[~reset])  # every other delta untouched
        assert pruned[name].dtype == dtype
        changed += int(reset.sum())
    names = [n for n in model if pruner.prunable(n)]
    if granularity == "global":  # the k smallest deltas, the already-zero ones (bf16 rounding) first
        zero_before = sum(int((deltas[n] == 0).sum()) for n in names)
        zero_after = sum(int((pruned[n].float() == base[n].float()).sum()) for n in names)
        assert zero_after == max(zero_before, round(rate * sum(model[n].numel() for n in names)))
        assert changed == zero_after - zero_before > 0
    # lazy view and in-place pruning give the same tensors
    lazy, _ = pruner.pruned(LazyTensors(list(model), model.__getitem__), rate)
    in_place = {name: t.clone() for name, t in model.items()}
    pruner.prune_(in_place, rate)
    for name in model:
        assert torch.equal(lazy[name], pruned[name]) and torch.equal(in_place[name], pruned[name])


def test_task_vector_pruning_by_hand():
    # deltas 0.5, -0.1, 0.3, -0.7: at rate 0.5 the two smallest |delta| (0.1, 0.3) go back to the base
    name = "model.layers.0.mlp.up_proj.weight"
    base = {name: torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    model = {name: torch.tensor([[1.5, 1.9], [3.3, 3.3]])}
    for granularity in ("local", "global"):
        pruner = MagnitudePruner(granularity, target="task_vector").with_base(base)
        pruned = pruner.prune(model, 0.5)[name]
        assert torch.allclose(pruned, torch.tensor([[1.5, 2.0], [3.0, 3.3]]), atol=1e-6, rtol=0)
        delta = pruner.targets(pruner.prune(model, 0.5))[name]  # what a sparsity measure reads
        assert torch.allclose(delta, torch.tensor([[0.5, 0.0], [0.0, -0.7]]), atol=1e-6, rtol=0)


def test_task_vector_target_needs_a_base_and_a_valid_name():
    with pytest.raises(ValueError, match="needs a base model"):
        MagnitudePruner(target="task_vector").prune(_model(), 0.5)
    with pytest.raises(ValueError, match=r"^target='deltas': must be one of weights, task_vector$"):
        MagnitudePruner(target="deltas")
    assert MagnitudePruner().with_base(_model()).base is None  # target=weights keeps no base


def _every_value(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern of a 16-bit float dtype (both zeros, subnormals, infinities, NaNs)."""
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_counting_and_zeroing_kernels_are_exact_on_every_value(dtype):
    """The compare-and-count and the hardshrink zeroing agree with the integer keys for every
    value of the dtype and cuts at the edges (0, 1, the infinities, the NaNs, past the end)."""
    values = _every_value(dtype)
    space, scratch = magnitude.KeySpace(dtype), magnitude.Scratch()
    keys = values.view(torch.int16).to(torch.int32) & (space.limit - 1)
    infinity = int(torch.tensor([float("inf")], dtype=dtype).view(torch.int16)[0])
    edges = (infinity, infinity + 1, infinity + 2, space.limit - 1, space.limit)
    for cut in (0, 1, 2, 1000, 15000, 16100, *edges):
        expected = torch.where(keys < cut, torch.zeros_like(values), values)
        out = torch.empty_like(values)
        magnitude._mask_into(values, cut, space, scratch, out)
        assert torch.equal(out.view(torch.int16), expected.view(torch.int16)), cut
        in_place = values.clone()
        magnitude._mask_into(in_place, cut, space, scratch, in_place)
        assert torch.equal(in_place.view(torch.int16), expected.view(torch.int16)), cut
        count = magnitude._count_below(magnitude._keys(values, space, scratch), cut, space, scratch)
        assert count == int((keys < cut).sum()), cut


@pytest.mark.parametrize("granularity", ["global", "local"])
def test_pruning_plans_return_their_exact_zero_counts(granularity, monkeypatch):
    """`pruned` (lazy) and `prune_` (in place) return their plan; its zero counts equal the
    pruned tensors' own counts, ties and existing zeros included, and zero-count scoring given
    them reads no tensor."""
    from sae_merging.sparsity.measures import SparsityStats, zero_count
    from sae_merging.sparsity.scoring import SparsityScoring

    monkeypatch.setattr(magnitude, "CHUNK", 64)
    monkeypatch.setattr(magnitude, "SAMPLE", 32)
    monkeypatch.setattr(magnitude, "SAMPLE_BLOCK", 8)
    g = torch.Generator().manual_seed(3)
    model = {
        f"layers.{i}.weight": ((torch.randn(20, 12, generator=g) * 3).round() / 100).bfloat16()
        for i in range(3)
    }
    model["embed_tokens.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    pruner = MagnitudePruner(granularity)
    reads = []

    def read(name):
        reads.append(name)
        return model[name].clone()

    expected = pruner.prune(model, 0.55)
    in_place = {name: t.clone() for name, t in model.items()}
    for pruned, plan in (
        pruner.pruned(LazyTensors(list(model), read), 0.55),
        (in_place, pruner.prune_(in_place, 0.55)),
    ):
        assert set(plan.zero_counts) == {n for n in model if pruner.prunable(n)}
        for name, (count, zeros) in plan.zero_counts.items():
            assert (count, zeros) == (expected[name].numel(), int((expected[name] == 0).sum())), name
            assert torch.equal(pruned[name], expected[name])
        reads.clear()
        scoring = SparsityScoring(zero_count, granularity)
        value = scoring.of_model(pruned, pruner, plan.zero_counts)
        # (local scoring measures every tensor: the skipped ones are read)
        assert reads == (
            [] if granularity == "global" else ["embed_tokens.weight"] * isinstance(pruned, LazyTensors)
        )
        assert value == scoring.of_model(expected, pruner)
    by_task_vector = MagnitudePruner(granularity, target="task_vector").with_base(model)
    assert by_task_vector.prune_(dict(model), 0.5).zero_counts == {}  # the task vector's zeros
    assert SparsityStats.counts(expected["layers.0.weight"]).zeros > 0
