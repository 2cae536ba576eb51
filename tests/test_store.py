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


def _refuse(why: str):
    def refuse(*_):
        raise AssertionError(f"a tensor was unpacked {why}")

    return refuse


def _refusing_member(tmp_path, monkeypatch, model: dict, why: str):
    """`model` stored as an archive member and opened; unpacking any tensor fails the test."""
    from sae_merging.runtime import store as store_module

    store = IndividualStore(tmp_path)
    store.save("m", model)
    monkeypatch.setattr(store_module, "unpack", _refuse(why))
    return store.open("m")


def test_a_members_sizes_are_read_from_its_meta_without_unpacking(tmp_path, monkeypatch):
    """Planning a pruning of an archive member counts its tensors' entries from the stored
    shapes: no tensor is read for them."""
    from sae_merging.runtime import store as store_module
    from sae_merging.utils.tensorfiles import numel

    model = MagnitudePruner("global").prune(_model(torch.bfloat16), 0.6)
    opened = _refusing_member(tmp_path, monkeypatch, model, "to learn its size")
    monkeypatch.setattr(store_module.TensorFile, "get", _refuse("to learn its size"))
    assert {name: numel(opened, name) for name in opened} == {n: t.numel() for n, t in model.items()}


def _sparse(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """A tensor with 60% zeros, some -0.0 among the rest, on a coarse grid (many ties)."""
    generator = torch.Generator().manual_seed(seed)
    tensor = ((torch.randn(n, generator=generator) * 4).round() / 64).to(dtype)
    tensor[torch.rand(n, generator=generator) < 0.6] = 0
    tensor[torch.rand(n, generator=generator) < 0.02] = -0.0
    return tensor


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_tensor_reads_equal_the_dense_tensor(dtype):
    """A packed tensor read where it lies gives the dense tensor's bits: its entries at sorted
    positions, its chunks at any size (a chunk may start inside a mask byte), unpacked whole,
    and its zero count (+0.0 only)."""
    from sae_merging.utils.packed import PackedTensor, pack

    width = torch.int16 if dtype == torch.bfloat16 else torch.int32
    for n in (9, 1000, 40_001):
        tensor = _sparse(dtype, n, n)
        packed = PackedTensor(*pack(tensor), (n,))
        assert torch.equal(packed.dense().view(width), tensor.view(width))
        assert packed.zeros == int((tensor.view(width) == 0).sum())
        positions = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 3].sort().values
        assert torch.equal(packed.at(positions).view(width), tensor[positions].view(width))
        for size in (13, 1024):
            got = torch.cat([chunk.clone() for _, chunk in packed.chunks(size)])
            assert torch.equal(got.view(width), tensor.view(width))


@pytest.mark.parametrize("granularity", ["global", "local"])
def test_a_members_plan_reads_it_packed_and_equals_the_dense_plan(tmp_path, monkeypatch, granularity):
    """Planning a pruning of an archive member counts its packed tensors' values and takes their
    zeros from the mask, never unpacking one, and gives the plan of its dense tensors: at the
    rate it was stored at (the threshold is its zeros), below it (global: the plan taken from
    the stored zeros and -0.0 values, no pass) and above it; with samples smaller than the
    model and several counting passes."""
    from sae_merging.pruning import magnitude

    monkeypatch.setattr(magnitude, "CHUNK", 1000)
    monkeypatch.setattr(magnitude, "SAMPLE", 512)
    monkeypatch.setattr(magnitude, "SAMPLE_BLOCK", 16)
    monkeypatch.setattr(magnitude, "MAX_CANDIDATES", 64)
    pruner = MagnitudePruner(granularity)
    model = {
        name: _sparse(torch.bfloat16, t.numel(), i).reshape(t.shape)
        for i, (name, t) in enumerate(_model(torch.bfloat16).items())
    }
    opened = _refusing_member(tmp_path, monkeypatch, model, "to plan its pruning")
    for rate in (0.3, 0.6, 0.8):
        assert pruner.model_plan(opened, rate) == pruner.model_plan(model, rate), rate


def test_a_packed_tensors_counts_and_collected_keys_equal_the_dense_ones():
    """A counting pass over a packed tensor (its values, its zeros added as key 0) counts and
    collects what the pass over the dense tensor does, the zeros included in a range from 0."""
    from sae_merging.pruning.magnitude import CountRequest, KeySpace, Scratch, _count_tensor
    from sae_merging.utils.packed import PackedTensor, pack

    tensor = _sparse(torch.bfloat16, 5000, 3)
    packed = PackedTensor(*pack(tensor), tensor.shape)
    space = KeySpace(torch.bfloat16)
    for request in (
        CountRequest(space, (0, 1, 2000, 16000, space.limit), (0, 16000)),
        CountRequest(space, (1, 15600), (1, 15600)),
    ):
        rows, found = zip(*(_count_tensor(t, request, Scratch()) for t in (packed, tensor)), strict=True)
        assert rows[0] == rows[1]
        keys = [torch.cat(f).sort().values for f in found]
        assert torch.equal(keys[0], keys[1]) and keys[0].numel() > 0


def test_a_cut_that_leaves_a_packed_tensor_skips_its_zeroing_and_a_negative_zero_is_still_zeroed():
    """A threshold-0 cut whose ties are the packed tensor's +0.0 entries changes nothing, so
    its chunks are the unpacked ones (no zeroing pass); with a -0.0 among the key-0 entries the
    cut is applied (the -0.0 becomes +0.0): both equal the dense tensor's cut, bit for bit."""
    from sae_merging.pruning.magnitude import KeySpace, Scratch, TensorCut
    from sae_merging.utils.packed import PackedTensor, pack

    space = KeySpace(torch.bfloat16)
    for negative_zeros in (False, True):
        tensor = _sparse(torch.bfloat16, 5000, 4)
        if not negative_zeros:
            tensor[tensor.view(torch.int16) == -32768] = 0.0
        packed = PackedTensor(*pack(tensor), tensor.shape)
        key_zero = int((tensor.view(torch.int16) & 0x7FFF).eq(0).sum())
        cut = TensorCut(space, 0, key_zero, key_zero, key_zero)
        assert cut.leaves(packed) is not negative_zeros
        got = torch.cat([part.clone() for _, part in cut.chunks(packed, Scratch())])
        assert torch.equal(got.view(torch.int16), cut.prune(tensor).view(-1).view(torch.int16))
        assert int(got.view(torch.int16).eq(-32768).sum()) == 0


def test_a_members_dense_tensors_are_read_as_views_and_its_reads_are_its_tensors(tmp_path):
    """An opened member's dense tensors (an embedding, a norm) are peeked as views of one
    mapping, not copies (two peeks share their memory); every tensor read by `peek`, item or
    `stored` equals the saved one bit for bit, after its pages were released too."""
    from sae_merging.utils.packed import dense
    from sae_merging.utils.tensorfiles import stored

    model = MagnitudePruner("global").prune(_model(torch.bfloat16), 0.6)  # (embeddings, norms: dense)
    store = IndividualStore(tmp_path)
    store.save("m", model)
    opened = store.open("m")
    assert opened.mapped and opened.packs
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert opened.peek(name).data_ptr() == opened.peek(name).data_ptr()
        assert opened[name].data_ptr() != opened.peek(name).data_ptr()  # (an item is a copy)
    for name, tensor in model.items():
        for read in (opened.peek(name), opened[name], dense(stored(opened, name))):
            assert torch.equal(read.view(torch.int16), tensor.view(torch.int16)), name
        opened.release(name)
        assert torch.equal(opened.peek(name).view(torch.int16), tensor.view(torch.int16)), name
