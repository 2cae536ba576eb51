"""Streaming merges and pruning from safetensors files equal the in-memory references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_merging.merging import functions, streaming
from sae_merging.pruning import magnitude
from sae_merging.pruning.magnitude import MagnitudePruner
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
    monkeypatch.setattr(streaming, "SUB_CHUNK", 30)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "granularity,rate", [("global", 0.6), ("global", 0.0), ("global", 1.0), ("local", 0.3)]
)
@pytest.mark.parametrize("threads", [1, 3])
def test_pruned_task_arithmetic_equals_reference(tmp_path, dtype, granularity, rate, threads):
    """Merged and pruned in one call (threshold counted during the merge pass, zeros written in
    place before the file appears), by any number of threads: the in-memory merge, then
    `pruner.prune`, bit for bit."""
    base = _model(12, dtype)
    experts = [_model(13, dtype, base), _model(14, dtype, base)]
    files = [_save(m, tmp_path / f"{i}.safetensors") for i, m in enumerate([base, *experts])]
    pruner = MagnitudePruner(granularity)
    out = streaming.stream_task_arithmetic(
        files[0], files[1:], 0.6, tmp_path / "out.safetensors", [1.0, 0.5], rate, pruner, threads
    )
    merged = {  # in the file's order: global pruning breaks ties by it
        n: functions.task_arithmetic(base[n], [e[n] for e in experts], 0.6, [1.0, 0.5])
        for n in _load(files[0])
    }
    _assert_same(load_file(str(out)), pruner.prune(merged, rate))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0.safetensors",
        "1.safetensors",
        "2.safetensors",
        "out.safetensors",
    ]


_PLAN = streaming._plan


def test_pruned_task_arithmetic_survives_a_missed_bracket(tmp_path, monkeypatch):
    """A sample that misleads the threshold search only costs a plan over the written file."""
    plans = []
    monkeypatch.setattr(streaming, "_plan", lambda *a: plans.append(a[1]) or _PLAN(*a))
    monkeypatch.setattr(
        streaming, "sample_of_raw", lambda view, where: torch.zeros(len(where), dtype=view.dtype)
    )
    base = _model(15, torch.bfloat16)
    experts = [_model(16, torch.bfloat16, base)]
    files = [_save(m, tmp_path / f"{i}.safetensors") for i, m in enumerate([base, *experts])]
    pruner = MagnitudePruner("global")
    out = streaming.stream_task_arithmetic(
        files[0], files[1:], 1.0, tmp_path / "o.safetensors", None, 0.5, pruner
    )
    merged = {n: functions.task_arithmetic(base[n], [experts[0][n]], 1.0) for n in _load(files[0])}
    _assert_same(load_file(str(out)), pruner.prune(merged, 0.5))
    assert len(plans) == 1


def test_task_arithmetic_refuses_mismatched_models(tmp_path):
    base = _model(0, torch.float32)
    other = {**base, "model.norm.weight": torch.ones(8)}
    files = [_save(base, tmp_path / "a.safetensors"), _save(other, tmp_path / "b.safetensors")]
    with pytest.raises(ValueError, match="shapes differ"):
        streaming.stream_task_arithmetic(files[0], files[1:], 1.0, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


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
