"""Streaming merges and pruning from safetensors files equal the in-memory references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_merging.merging import functions, streaming
from sae_merging.methods.sae import SparsityScoring
from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.sparsity.measures import magnitude as hoyer
from sae_merging.sparsity.measures import zero_count
from sae_merging.utils.tensorfiles import TensorFile, TensorFileWriter, open_tensor_file

SHAPES = {
    "model.embed_tokens.weight": (40, 16),
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.mlp.up_proj.weight": (24, 16),
    "model.layers.0.mlp.down_proj.weight": (16, 24),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.layers.1.self_attn.o_proj.weight": (16, 16),
    "model.norm.weight": (16,),
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks and samples far smaller than the tensors, so every multi-chunk and sampled path
    runs (ties split across chunks, brackets from a sample)."""
    monkeypatch.setattr(magnitude, "CHUNK", 100)
    monkeypatch.setattr(magnitude, "SAMPLE", 64)
    monkeypatch.setattr(magnitude, "SAMPLE_BLOCK", 8)


def _model(seed: int, dtype: torch.dtype, base: dict | None = None) -> dict[str, torch.Tensor]:
    """A random Llama-like model; with `base`, an expert near it. Weights on a coarse grid
    give many ties; some entries are zero already."""
    g = torch.Generator().manual_seed(seed)
    model = {}
    for name, shape in SHAPES.items():
        if base is None:
            tensor = torch.randn(shape, generator=g) * 0.02
            tensor = torch.where(torch.rand(shape, generator=g) < 0.3, (tensor * 200).round() / 200, tensor)
            tensor[..., :1] = 0
        else:
            tensor = base[name].float() + torch.randn(shape, generator=g) * 0.002
        model[name] = tensor.to(dtype)
    return model


def _save(model: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.items()}, str(path))
    return path


def _save_sharded(model: dict[str, torch.Tensor], folder: Path) -> Path:
    """A model folder with two shards and an index (names in the index sorted, as HF writes)."""
    folder.mkdir()
    names = list(model)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in shards.items():
        save_file({n: model[n] for n in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _load(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint in memory, in its own order (the order global pruning breaks ties by)."""
    with open_tensor_file(path) as file:
        return {name: file.view(name).clone() for name in file.names()}


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weights", [None, [0.7, 1.3]])
def test_task_arithmetic_equals_reference(tmp_path, dtype, weights):
    base = _model(0, dtype)
    experts = [_model(1, dtype, base), _model(2, dtype, base)]
    files = [_save(base, tmp_path / "base.safetensors"), _save(experts[0], tmp_path / "e1.safetensors")]
    files.append(_save_sharded(experts[1], tmp_path / "e2"))  # a sharded folder as input
    out = streaming.stream_task_arithmetic(files[0], files[1:], 0.8, tmp_path / "out.safetensors", weights)
    expected = {n: functions.task_arithmetic(base[n], [e[n] for e in experts], 0.8, weights) for n in base}
    _assert_same(load_file(str(out)), expected)
    assert not list(tmp_path.glob("*.partial"))


def test_task_arithmetic_refuses_mismatched_models(tmp_path):
    base = _model(0, torch.float32)
    other = {**base, "model.norm.weight": torch.ones(8)}
    files = [_save(base, tmp_path / "a.safetensors"), _save(other, tmp_path / "b.safetensors")]
    with pytest.raises(ValueError, match="shapes differ"):
        streaming.stream_task_arithmetic(files[0], files[1:], 1.0, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("granularity", ["global", "local"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rate", [0.0, 0.6, 1.0])
def test_stream_prune_equals_pruner(tmp_path, granularity, dtype, rate):
    model = _model(3, dtype)
    pruner = MagnitudePruner(granularity)
    source = _save(model, tmp_path / "model.safetensors")
    streaming.stream_prune(source, rate, pruner, tmp_path / "pruned.safetensors")
    _assert_same(load_file(str(tmp_path / "pruned.safetensors")), pruner.prune(_load(source), rate))


def _reference_child(a, b, p_a, p_b, rate, pruner, scoring, alpha):
    """SAE._make_child with the linear merger, in memory."""
    parent_a, parent_b = pruner.prune(a, rate), pruner.prune(b, rate)
    s_a, s_b = scoring.per_tensor(parent_a, pruner), scoring.per_tensor(parent_b, pruner)
    ratios = {n: functions.mixing_ratio(p_a, alpha * s_a[n], p_b, alpha * s_b[n]) for n in parent_a}
    child = {n: functions.linear(parent_a[n], parent_b[n], ratios[n]) for n in parent_a}
    child = pruner.prune(child, rate)
    return child, ratios, scoring.of_model(child, pruner)


@pytest.mark.parametrize(
    "dtype,granularity,scoring_granularity,scorer",
    [
        (torch.bfloat16, "global", "global", zero_count),
        (torch.float32, "global", "global", zero_count),
        (torch.bfloat16, "local", "local", zero_count),
        (torch.bfloat16, "global", "local", hoyer),
        (torch.float32, "local", "global", hoyer),
    ],
)
def test_sae_merge_equals_in_memory_child(tmp_path, dtype, granularity, scoring_granularity, scorer):
    base = _model(4, dtype)
    a, b = _model(5, dtype, base), MagnitudePruner(granularity).prune(_model(6, dtype, base), 0.3)
    pruner = MagnitudePruner(granularity)
    scoring = SparsityScoring(scorer, scoring_granularity)
    args = (0.55, 0.4, 0.6, pruner, scoring, 0.1)
    files = _save(a, tmp_path / "a.safetensors"), _save_sharded(b, tmp_path / "b")
    expected, ratios, sparsity = _reference_child(_load(files[0]), _load(files[1]), *args)
    child = streaming.stream_sae_merge(*files, *args, tmp_path / "child.safetensors")
    _assert_same(load_file(str(child.path)), expected)
    assert child.ratios == ratios
    assert child.sparsity == pytest.approx(sparsity, rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b", "child.safetensors"]


def test_sae_merge_with_partial_scorer(tmp_path):
    """Hydra hands scorers over as functools.partial: the counts-only path still applies."""
    from functools import partial

    model = _model(7, torch.bfloat16)
    files = (
        _save(model, tmp_path / "a.safetensors"),
        _save(_model(8, torch.bfloat16, model), tmp_path / "b.st"),
    )
    pruner, scoring = MagnitudePruner("global"), SparsityScoring(partial(zero_count))
    assert streaming._counts_only(scoring.scorer)
    expected, _, _ = _reference_child(
        _load(files[0]), _load(files[1]), 0.3, 0.3, 0.5, pruner, SparsityScoring(zero_count), 0.1
    )
    child = streaming.stream_sae_merge(
        *files, 0.3, 0.3, 0.5, pruner, scoring, 0.1, tmp_path / "c.safetensors"
    )
    _assert_same(load_file(str(child.path)), expected)


def test_writer_layout_mode_and_sharded_reader(tmp_path):
    model = _model(9, torch.bfloat16)
    layout = [(n, t.dtype, tuple(t.shape)) for n, t in model.items()]
    writer = TensorFileWriter(tmp_path / "m.safetensors", {"format": "pt"}, layout)
    for name, tensor in reversed(model.items()):  # any order, in parts
        flat = tensor.reshape(-1)
        writer.write_part(name, 0, flat[:5])
        writer.write_part(name, 5, flat[5:])
    assert not (tmp_path / "m.safetensors").exists()  # appears on close only
    writer.close()
    _assert_same(load_file(str(tmp_path / "m.safetensors")), model)
    with TensorFile(tmp_path / "m.safetensors") as file:
        assert file.metadata == {"format": "pt"}
    with open_tensor_file(_save_sharded(model, tmp_path / "sharded")) as sharded:
        assert set(sharded.names()) == set(model)
        assert all(torch.equal(sharded.view(n), t) for n, t in model.items())


def test_writer_refuses_incomplete_file(tmp_path):
    layout = [("a", torch.float32, (4,)), ("b", torch.float32, (2,))]
    writer = TensorFileWriter(tmp_path / "m.safetensors", layout=layout)
    writer.write("a", torch.ones(4))
    with pytest.raises(ValueError, match="not fully written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("predict", ["sampled", "wrong"])
def test_sae_merge_counts_the_child_during_the_merge(tmp_path, monkeypatch, predict):
    """Under global pruning the child's threshold comes from counts taken in the merge pass (no
    plan over the written child); a wrong prediction of the child's sample falls back to one,
    and the child is the same either way."""
    plans = []
    monkeypatch.setattr(streaming, "_plan", lambda *a: plans.append(a[1]) or _PLAN(*a))
    if predict == "wrong":
        monkeypatch.setattr(streaming, "_predicted", lambda view, where, cut: torch.zeros(len(where)))
    base = _model(10, torch.bfloat16)
    files = _save(_model(11, torch.bfloat16, base), tmp_path / "a.st"), _save(base, tmp_path / "b.st")
    args = (0.5, 0.5, 0.6, MagnitudePruner("global"), SparsityScoring(zero_count), 0.1)
    expected, _, _ = _reference_child(_load(files[0]), _load(files[1]), *args)
    child = streaming.stream_sae_merge(*files, *args, tmp_path / "c.safetensors")
    _assert_same(load_file(str(child.path)), expected)
    assert len(plans) == (2 if predict == "sampled" else 3)


_PLAN = streaming._plan


@pytest.mark.parametrize("granularity,scorer", [("global", zero_count), ("local", hoyer)])
def test_sae_child_reads_parents_tensor_by_tensor(tmp_path, monkeypatch, granularity, scorer):
    """The run's own child construction (SAE._make_child, parents from the archive on disk),
    for parents above `stream_parents_above_gb`, equals the in-memory reference and never loads
    a parent whole: each tensor is read when the pass reaches it."""
    from types import SimpleNamespace

    from sae_merging.methods.sae import SAE
    from sae_merging.runtime.context import Member
    from sae_merging.runtime.store import IndividualStore
    from sae_merging.utils.timing import Timer

    base = _model(9, torch.bfloat16)
    a, b = (
        _model(10, torch.bfloat16, base),
        MagnitudePruner("global").prune(_model(11, torch.bfloat16, base), 0.5),
    )
    store = IndividualStore(tmp_path / "archive")
    store.save("a", a)
    store.save("b", b)
    pruner, scoring = MagnitudePruner(granularity), SparsityScoring(scorer, granularity)
    sae = SAE(schedule=None, pruner=pruner, scoring=scoring, stream_parents_above_gb=0.0)
    expected, ratios, _ = _reference_child(a, b, 0.55, 0.4, 0.6, pruner, scoring, sae.sparsity_weight)

    def whole(self, ident):
        raise AssertionError(f"parent {ident} loaded whole")

    monkeypatch.setattr(IndividualStore, "load", whole)
    ctx = SimpleNamespace(store=store, timer=Timer())
    members = [Member(ident=i, origin="test", generation=0, rate=0.0, sparsity=0.0) for i in "ab"]
    child, child_ratios = sae._make_child(ctx, *members, 0.55, 0.4, 0.6, None)
    _assert_same(child, expected)
    assert child_ratios == list(ratios.values())
    assert set(ctx.timer.totals) == {"prune", "merge"}
