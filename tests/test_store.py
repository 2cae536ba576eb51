"""The archive on disk: compact storage of pruned individuals, bit-exact loading."""

from __future__ import annotations

import pytest
import torch

from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.runtime.store import IndividualStore


def _model(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (512, 128),
        "model.layers.0.self_attn.q_proj.weight": (128, 128),
        "model.layers.0.mlp.up_proj.weight": (384, 128),
        "model.norm.weight": (128,),
    }
    return {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_pruned_individual_is_compact_and_bit_exact(tmp_path, dtype):
    """At 60% sparsity a pruned individual takes <= 50% of the dense bytes (bf16: 1/8 byte of mask
    + 0.4 x 2 bytes of values per entry = 46%) and loads back bit for bit."""
    tensors = _model(dtype)
    pruned = MagnitudePruner(granularity="local", skip=()).prune(tensors, 0.6)
    store = IndividualStore(tmp_path)
    store.save("dense", tensors)
    store.save("pruned", pruned)
    dense_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert store.nbytes("dense") >= dense_bytes  # stored as is (plus headers)
    assert store.nbytes("pruned") <= 0.5 * dense_bytes
    loaded = store.load("pruned")
    assert list(loaded) == list(pruned)  # the model's own tensor order
    for name, tensor in pruned.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name].view(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_negative_zero_and_idents(tmp_path):
    """A -0.0 comes back as -0.0 (the mask marks non-zero bit patterns, not non-zero values),
    and deleted individuals vanish."""
    tensor = torch.tensor([0.0, -0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0] * 8)
    store = IndividualStore(tmp_path)
    store.save("a", {"w": tensor})
    back = store.load("a")["w"]
    assert torch.equal(back.view(torch.int32), tensor.view(torch.int32))
    assert store.idents() == ["a"]
    store.delete("a")
    assert store.idents() == []


def test_file_digest_reads_in_blocks_and_equals_the_whole_files_hash(tmp_path):
    """Hashed block by block through the mapping (each block's pages released after it), a
    file's digest is XXH3-128 of all its bytes, whatever the block size."""
    import mmap

    import xxhash

    from sae_merging.utils.files import file_digest

    data = bytes(range(256)) * (mmap.PAGESIZE * 7 // 512)  # 3.5 pages
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = xxhash.xxh3_128(data).hexdigest()
    assert file_digest(path, block=mmap.PAGESIZE) == expected
    assert file_digest(path) == expected


def test_a_members_sizes_are_read_from_its_meta_without_unpacking(tmp_path, monkeypatch):
    """Planning a pruning of an archive member counts its tensors' entries from the stored
    shapes: no tensor is read for them."""
    from sae_merging.runtime import store as store_module
    from sae_merging.utils.tensorfiles import numel

    model = MagnitudePruner("global").prune(_model(torch.bfloat16), 0.6)
    store = IndividualStore(tmp_path)
    store.save("m", model)
    opened = store.open("m")

    def refuse(*_):
        raise AssertionError("a tensor was unpacked to learn its size")

    monkeypatch.setattr(store_module, "unpack", refuse)
    monkeypatch.setattr(store_module.TensorFile, "get", refuse)
    assert {name: numel(opened, name) for name in opened} == {n: t.numel() for n, t in model.items()}
