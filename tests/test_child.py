"""The one child path (`merging.child`): SAE's child equals its formula, streamed parents give
the same child as parents in memory bit for bit under every option, and the benchmark's SAE
row makes exactly the child `method=sae` makes."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sae_merging.merging import functions
from sae_merging.methods.m2n2 import M2N2, crossover, interpolate
from sae_merging.methods.sae import SAE
from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.runtime.context import Member
from sae_merging.runtime.store import IndividualStore
from sae_merging.sparsity.measures import SparsityStats, hoyer, zero_count
from sae_merging.sparsity.scoring import SparsityScoring
from sae_merging.utils.tensorfiles import LazyTensors, write_tensors
from sae_merging.utils.timing import Timer

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "model.embed_tokens.weight": (40, 16),
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.mlp.up_proj.weight": (24, 16),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.layers.1.self_attn.o_proj.weight": (16, 16),
    "model.norm.weight": (16,),
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks and samples smaller than the tensors, so the sampled and chunked paths run."""
    monkeypatch.setattr(magnitude, "CHUNK", 100)
    monkeypatch.setattr(magnitude, "SAMPLE", 64)
    monkeypatch.setattr(magnitude, "SAMPLE_BLOCK", 8)


def _model(seed: int, base: dict | None = None, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """A random Llama-like model on a coarse grid (many ties, some zeros); near `base` if given."""
    g = torch.Generator().manual_seed(seed)
    model = {}
    for name, shape in SHAPES.items():
        if base is None:
            tensor = (torch.randn(shape, generator=g) * 4).round() / 200
        else:
            tensor = base[name].float() + (torch.randn(shape, generator=g) * 0.4).round() / 200
        model[name] = tensor.to(dtype)
    return model


def _lazy(tensors: dict[str, torch.Tensor], reads: list[str] | None = None) -> LazyTensors:
    """A streamed parent: each tensor handed out as a fresh copy when read."""

    def read(name: str) -> torch.Tensor:
        if reads is not None:
            reads.append(name)
        return tensors[name].clone()

    return LazyTensors(list(tensors), read)


def _assert_same(got, expected) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def _sae(merger="linear", redense="parents", granularity="global", scoring="global", scorer=zero_count, **kw):
    mergers = {"linear": functions.linear, "attraction": functions.attraction}
    return SAE(
        schedule=None,
        pruner=MagnitudePruner(granularity),
        scoring=SparsityScoring(scorer, scoring),
        merger=mergers[merger],
        redense=redense,
        **kw,
    )


@pytest.fixture(scope="module")
def parents():
    base = _model(1)
    a = _model(2, base)
    b = MagnitudePruner("global").prune(_model(3, base), 0.4)  # already sparse: local sparsities differ
    return a, b


def test_sae_child_equals_its_formula(parents):
    """Eq. 5 ratios from the pruned parents' sparsity, eq. 4, the child pruned, by hand."""
    a, b = parents
    sae = _sae(scoring="local", scorer=hoyer)
    rate, p_a, p_b, alpha = 0.5, 0.6, 0.3, sae.sparsity_weight
    pruner = sae.pruner
    pa, pb = pruner.prune(a, rate), pruner.prune(b, rate)
    ratios = {}
    for name in a:  # scoring=local: each tensor's own measure, prunable or not
        s_a, s_b = hoyer(SparsityStats.of(pa[name])), hoyer(SparsityStats.of(pb[name]))
        ratios[name] = (p_a + alpha * s_a) / ((p_a + alpha * s_a) + (p_b + alpha * s_b))
    merged = {n: (ratios[n] * pa[n].float() + (1 - ratios[n]) * pb[n].float()).to(a[n].dtype) for n in a}
    expected = pruner.prune(merged, rate)
    child = sae.child(a, b, p_a, p_b, rate)
    _assert_same(child.tensors, expected)
    assert child.weights == pytest.approx(ratios, rel=1e-12)
    assert len(set(ratios.values())) > 1  # the per-tensor sparsity mattered


OPTIONS = list(
    itertools.product(
        ["linear", "attraction"], ["parents", "original_dense"], ["local", "global"], ["local", "global"]
    )
)


@pytest.mark.parametrize("merger,redense,granularity,scoring", OPTIONS)
def test_streamed_parents_give_the_same_child(parents, merger, redense, granularity, scoring):
    """Every option, both regimes: the child and its ratios are identical bit for bit."""
    a, b = parents
    sae = _sae(merger, redense, granularity, scoring, scorer=hoyer if scoring == "local" else zero_count)
    dense = {n: functions.weighted_average([a[n], b[n]]) for n in a} if redense == "original_dense" else None
    in_memory = sae.child(a, b, 0.55, 0.4, 0.6, dense)
    reads: list[str] = []
    lazy_dense = _lazy(dense) if dense is not None else None
    streamed = sae.child(_lazy(a, reads), _lazy(b, reads), 0.55, 0.4, 0.6, lazy_dense)
    _assert_same(streamed.tensors, in_memory.tensors)
    assert streamed.weights == in_memory.weights
    assert len(reads) > 2 * len(a)  # the streamed parents were read pass by pass, not once
    if redense == "original_dense" and merger == "linear":
        # re-densing changed the child (under attraction the child's pruning can undo it all)
        plain = _sae(merger, "parents", granularity, scoring).child(a, b, 0.55, 0.4, 0.6)
        assert any(not torch.equal(plain.tensors[n], in_memory.tensors[n]) for n in a)


@pytest.mark.parametrize("merger,redense,granularity,scoring", OPTIONS)
def test_child_built_in_the_loaded_parents_place_is_the_same_child(
    parents, merger, redense, granularity, scoring
):
    """Below the streaming threshold the first parent is loaded and turned into the child
    tensor by tensor while the second streams (`ChildRecipe.parents`); that child equals the
    child of both parents held in memory (and of both loaded and given up) bit for bit."""
    a, b = parents
    sae = _sae(merger, redense, granularity, scoring, scorer=hoyer if scoring == "local" else zero_count)
    dense = {n: functions.weighted_average([a[n], b[n]]) for n in a} if redense == "original_dense" else None
    in_memory = sae.child(a, b, 0.55, 0.4, 0.6, dense)
    reads: list[str] = []
    loaded, streamed = sae.recipe.parents(_lazy(a), 1, _lazy(b, reads))
    assert isinstance(loaded, dict) and isinstance(streamed, LazyTensors)
    child = sae.child(loaded, streamed, 0.55, 0.4, 0.6, dense)
    _assert_same(child.tensors, in_memory.tensors)
    assert child.weights == in_memory.weights
    assert child.tensors is loaded  # built in the loaded parent's place, no third model
    assert len(reads) > len(b)  # the second parent was streamed, pass by pass
    both = [sae.recipe.parent(_lazy(m), 1) for m in (a, b)]
    given_up = sae.child(*both, 0.55, 0.4, 0.6, dense)
    _assert_same(given_up.tensors, in_memory.tensors)
    assert len(both[1]) == 0  # the second loaded parent's tensors were dropped once merged
    assert len(a) == len(b) == len(SHAPES)  # the caller's own dicts are never consumed


def test_m2n2_crossover_goes_through_the_child_path(parents, tmp_path):
    """M2N2's child is interpolate(A_l, B_l, t_l) with the crossover shares, streamed or not."""
    a, b = parents
    store = IndividualStore(tmp_path)
    store.save("a", a)
    store.save("b", b)
    members = [Member(ident=i, origin="test") for i in "ab"]
    shares = [0.3 if index < 2 else 0.7 for index in range(len(a))]  # r before the split, 1 - r after
    expected = {n: interpolate(a[n], b[n], t, "slerp") for n, t in zip(a, shares, strict=True)}
    for above in (0.0, 10.0):
        m2n2 = M2N2(interpolation="slerp", stream_parents_above_gb=above)
        ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
        _assert_same(m2n2._crossover(ctx, *members, 2, 0.3), expected)
    # the reference's crossover (flat SLERP, split inside a tensor), streamed or not
    split = sum(t.numel() for t in list(a.values())[:2]) + 3
    expected = crossover(a, b, split, 0.3, "slerp_flat", "entry")
    for above in (0.0, 10.0):
        m2n2 = M2N2(interpolation="slerp_flat", split_at="entry", stream_parents_above_gb=above)
        ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
        _assert_same(m2n2._crossover(ctx, *members, split, 0.3), expected)


@pytest.mark.parametrize("stream", [False, True])
def test_benchmark_child_is_method_sae_child(parents, tmp_path, stream):
    """The benchmark's SAE row (parents from checkpoint files, stored as archive members pruned
    to its rate) makes the child that `method=sae` makes from the same parents pruned and
    stored in its archive, at the same rate and scores."""
    from bench import common, merge_passes  # experiments/bench/ (pytest's pythonpath)

    a, b = parents
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for model, file in zip((a, b), files, strict=True):
        write_tensors(file, model.items())
    sae = merge_passes.sae_method()
    assert isinstance(sae, SAE) and sae.pruner.granularity == "global"
    if stream:  # the recipe is frozen; parents this small stream only below a zero threshold
        object.__setattr__(sae.recipe, "stream_above_gb", 0.0)
    archive = merge_passes.sae_archive(sae, *files, tmp_path / "benchmark-archive")
    got = merge_passes.sae_child(sae, archive, tmp_path / "out", 0.5, 0.4)
    store = IndividualStore(tmp_path / "archive")
    store.save("a", sae.pruner.prune(a, common.RATE))
    store.save("b", sae.pruner.prune(b, common.RATE))
    _assert_same(archive.load("a"), store.load("a"))
    ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
    members = [Member(ident=i, origin="test") for i in "ab"]
    expected = sae._make_child(ctx, *members, 0.5, 0.4, common.RATE, None).tensors
    _assert_same(got, expected)
    _assert_same(IndividualStore(tmp_path / "out").load("child"), expected)


@pytest.mark.parametrize("granularity,scorer", [("global", zero_count), ("local", hoyer)])
def test_sae_child_reads_parents_tensor_by_tensor(parents, tmp_path, monkeypatch, granularity, scorer):
    """The run's own child construction (parents from the archive on disk), for parents above
    `stream_parents_above_gb`, equals the in-memory child and never loads a parent whole."""
    a, b = parents
    store = IndividualStore(tmp_path / "archive")
    store.save("a", a)
    store.save("b", b)
    sae = _sae(granularity=granularity, scoring=granularity, scorer=scorer, stream_parents_above_gb=0.0)
    expected = sae.child(a, b, 0.55, 0.4, 0.6)

    def whole(self, ident):
        raise AssertionError(f"parent {ident} loaded whole")

    monkeypatch.setattr(IndividualStore, "load", whole)
    ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
    members = [Member(ident=i, origin="test") for i in "ab"]
    made = sae._make_child(ctx, *members, 0.55, 0.4, 0.6, None)
    _assert_same(made.tensors, expected.tensors)
    assert made.weights == expected.weights
    assert set(ctx.timer.totals) == {"prune", "merge"}


@pytest.mark.parametrize("merger", ["linear", "attraction"])
def test_elementwise_mergers_write_the_child_into_the_loaded_parent(parents, merger):
    """With no re-dense source, eq. 4 and attraction write each child tensor into the loaded
    parent's own tensor (no new tensor per merge); the child is the same bit for bit."""
    a, b = parents
    sae = _sae(merger)
    expected = sae.child(a, b, 0.55, 0.4, 0.6)
    loaded, streamed = sae.recipe.parents(_lazy(a), 1, _lazy(b))
    storage = {name: t.untyped_storage().data_ptr() for name, t in loaded.items()}
    child = sae.child(loaded, streamed, 0.55, 0.4, 0.6)
    _assert_same(child.tensors, expected.tensors)
    assert {name: t.untyped_storage().data_ptr() for name, t in child.tensors.items()} == storage


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("merger,redense,granularity,scoring", OPTIONS[::3])
def test_child_made_on_the_runs_device_is_the_same_child(
    parents, device, merger, redense, granularity, scoring
):
    """`ChildRecipe.on(device)` moves the parents' chunks to the device, mixes and prunes them
    there and hands back the child there: on the CPU the same code path, bit for bit the child
    of the default recipe; on a GPU (when there is one) the same bits too (elementwise float32
    ops, exact zeroing and counting)."""
    a, b = parents
    sae = _sae(merger, redense, granularity, scoring, scorer=hoyer if scoring == "local" else zero_count)
    dense = {n: functions.weighted_average([a[n], b[n]]) for n in a} if redense == "original_dense" else None
    expected = sae.child(a, b, 0.55, 0.4, 0.6, dense)
    recipe = sae.recipe.on(device)
    assert recipe.device == torch.device(device) and sae.recipe.device == torch.device("cpu")
    rule = sae.mixing_ratios(0.55, 0.4)
    for parent_a, parent_b in ((a, b), (_lazy(a), _lazy(b))):
        child = recipe.make(parent_a, parent_b, rule, 0.6, dense)
        assert {t.device.type for t in child.tensors.values()} == {torch.device(device).type}
        _assert_same({n: t.cpu() for n, t in child.tensors.items()}, expected.tensors)
        assert child.weights == expected.weights and child.zero_counts == expected.zero_counts


def test_run_context_children_follow_the_runs_device(parents, tmp_path):
    """SAE's `_make_child` makes the child on `ctx.device` (the run's `device=`)."""
    a, b = parents
    store = IndividualStore(tmp_path)
    store.save("a", a)
    store.save("b", b)
    sae = _sae()
    made = []
    real = type(sae.recipe).make

    def spy(recipe, *args, **kwargs):
        made.append(recipe.device)
        return real(recipe, *args, **kwargs)

    members = [Member(ident=i, origin="test") for i in "ab"]
    ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
    import unittest.mock

    with unittest.mock.patch.object(type(sae.recipe), "make", spy):
        child = sae._make_child(ctx, *members, 0.55, 0.4, 0.6, None)
    assert made == [torch.device("cpu")]
    _assert_same(child.tensors, sae.child(a, b, 0.55, 0.4, 0.6).tensors)


def test_packed_archive_members_are_read_as_stored_at_any_size(parents, tmp_path, monkeypatch):
    """Below the streaming threshold, parents stored packed (pruned archive members) are not
    loaded: both are read as stored (counted and sampled packed, with a sample smaller than a
    tensor, unpacked chunk by chunk by the merge, never a whole tensor unpacked), and the child
    equals the in-memory child."""
    from sae_merging.pruning import magnitude
    from sae_merging.utils.packed import PackedTensor

    a, b = parents
    sae = _sae()
    pa, pb = (sae.pruner.prune(m, 0.6) for m in (a, b))
    store = IndividualStore(tmp_path / "archive")
    store.save("a", pa)
    store.save("b", pb)
    expected = sae.child(pa, pb, 0.55, 0.4, 0.6)

    def refuse(*_):
        raise AssertionError("a packed tensor was unpacked whole")

    monkeypatch.setattr(PackedTensor, "dense", refuse)  # every whole unpack goes through it
    monkeypatch.setattr(magnitude, "SAMPLE", 64)  # the thresholds sample, not read every entry
    ctx = SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))
    first, _ = sae.recipe.parents(store.open("a"), store.nbytes("a"), store.open("b"))
    assert isinstance(first, LazyTensors) and first.packs  # not loaded
    members = [Member(ident=i, origin="test") for i in "ab"]
    made = sae._make_child(ctx, *members, 0.55, 0.4, 0.6, None)
    _assert_same(made.tensors, expected.tensors)
    assert made.weights == expected.weights
