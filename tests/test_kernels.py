"""The compiled loops (`utils/kernels.c`) against the NumPy/torch code they replace, bit for bit:
packing and unpacking the archive's form, eq. 4 rounded to bf16, a threshold search's counts."""

from __future__ import annotations

import pytest
import torch

from sae_merging.merging import functions
from sae_merging.pruning import magnitude
from sae_merging.utils import kernels, packed

pytestmark = pytest.mark.skipif(kernels._compiler() is None, reason="no C compiler")


@pytest.fixture
def without_kernels(monkeypatch):
    """Run the NumPy/torch code instead (call inside the test, after the compiled run)."""

    def switch_off():
        monkeypatch.setattr(kernels, "library", lambda: None)

    return switch_off


def test_the_library_builds_and_takes_the_simd_paths_of_this_cpu():
    lib = kernels.library()
    assert lib is not None
    assert lib.sae_simd() in (0, 1, 3)  # bit 0 SSSE3, bit 1 AVX2 (AVX2 implies SSSE3)


def _awkward(n: int, dtype: torch.dtype, zeros: float, seed: int = 0) -> torch.Tensor:
    """Values with zeros, -0.0, subnormals, infinities and large and tiny magnitudes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 8)
    x = x.to(dtype)
    bits = x.view(torch.int16)
    special = torch.rand(n, generator=g)
    bits[special < 0.02] = -32768  # -0.0
    bits[(special >= 0.02) & (special < 0.03)] = 1  # the smallest subnormal
    if dtype == torch.bfloat16:
        bits[(special >= 0.03) & (special < 0.035)] = 0x7F80  # +inf
    x[torch.rand(n, generator=g) < zeros] = 0
    return x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, packed.PACK_PART + 13])
@pytest.mark.parametrize("zeros", [0.0, 0.6, 1.0])
def test_pack_and_unpack_equal_numpys_bit_for_bit(dtype, n, zeros, without_kernels):
    tensor = _awkward(n, dtype, zeros)
    if packed.packed_size(tensor) is None:  # (dense is smaller: nothing to compare)
        return
    mask, values = packed.pack(tensor)
    form = packed.PackedTensor(mask, values, (n,))
    sizes = [5, 8, 1001]  # chunks that start inside a mask byte, on one, and across many
    compiled = {size: [(s, c.clone()) for s, c in form.chunks(size)] for size in sizes}
    without_kernels()
    mask_np, values_np = packed.pack(tensor)
    assert torch.equal(mask, mask_np)
    assert torch.equal(values.view(torch.int16), values_np.view(torch.int16))
    for size in sizes:
        reference = [(s, c.clone()) for s, c in form.chunks(size)]
        assert [s for s, _ in compiled[size]] == [s for s, _ in reference]
        for (_, got), (_, want) in zip(compiled[size], reference, strict=True):
            assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert torch.equal(form.dense().view(torch.int16), tensor.view(torch.int16))


def test_unpacking_into_a_flat_output_and_at_a_values_tail_is_exact():
    """The vector loop stops 8 values before the end of the stored values (its 16-byte loads
    stay inside them); the dense copy equals the tensor to the last entry."""
    tensor = _awkward(4096 + 5, torch.bfloat16, 0.3, seed=3)
    tensor[-40:] = 1.5  # the tail dense: the last loads run right up to the values' end
    mask, values = packed.pack(tensor)
    flat = torch.full((tensor.numel(),), 7.0, dtype=torch.bfloat16)
    for _ in packed.PackedTensor(mask, values, tensor.shape).chunks(1000, flat):
        pass
    assert torch.equal(flat.view(torch.int16), tensor.view(torch.int16))


@pytest.mark.parametrize("ratio", [0.0, 1.0, 0.5, 0.37, 1 / 3, 0.999999, 2.5, -0.75])
def test_eq4_on_bf16_equals_torchs_float32_steps(ratio, without_kernels):
    a = _awkward(100_003, torch.bfloat16, 0.4, seed=1)
    b = _awkward(100_003, torch.bfloat16, 0.4, seed=2)
    b[:50] = torch.finfo(torch.bfloat16).max  # (sums that overflow to inf)
    a[:50] = torch.finfo(torch.bfloat16).max
    got = functions.linear(a, b, ratio)
    in_place = a.clone()
    functions.linear(in_place, b, ratio, out=in_place)
    without_kernels()
    want = functions.linear(a, b, ratio)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert torch.equal(in_place.view(torch.int16), want.view(torch.int16))


def test_eq4_leaves_a_block_with_a_nan_result_to_torch(without_kernels):
    """A NaN's bf16 pattern is torch's choice, so the compiled loop stops before the block
    holding one, leaving its inputs intact even when the output is the first input."""
    a = _awkward(10_000, torch.bfloat16, 0.4, seed=5)
    b = _awkward(10_000, torch.bfloat16, 0.4, seed=6)
    a[5000], b[5000] = float("inf"), float("-inf")  # inf - inf: NaN
    out = torch.zeros_like(a)
    assert kernels.linear_bf16(a, b, 0.5, out) == 4992  # (the block of 64 holding entry 5000)
    assert not out[4992:].any()
    got = a.clone()
    functions.linear(got, b, 0.5, out=got)
    without_kernels()
    want = functions.linear(a, b, 0.5)
    assert torch.isnan(got[5000]) and torch.isnan(want[5000])
    finite = ~torch.isnan(want)
    assert torch.equal(got[finite].view(torch.int16), want[finite].view(torch.int16))


@pytest.mark.parametrize("collect", [None, (0, 1), (16000, 16300), (16200, 1 << 15)])
def test_a_search_count_equals_numpys(collect, without_kernels):
    chunk = _awkward(200_001, torch.bfloat16, 0.5, seed=4)
    thresholds = (0, 1, 16000, 16200, 16300, 1 << 15) if collect else (16100,)
    request = magnitude.CountRequest(magnitude.KeySpace(torch.bfloat16), thresholds, collect)
    counts, inside = request.count(chunk, magnitude.Scratch())
    without_kernels()
    counts_np, inside_np = request.count(chunk, magnitude.Scratch())
    assert counts == counts_np
    if collect is None:
        assert inside is None and inside_np is None
    else:
        assert torch.equal(inside, inside_np)
        assert inside.dtype == torch.int32


def test_without_a_compiler_the_numpy_code_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None
        tensor = _awkward(999, torch.bfloat16, 0.6)
        unpacked = packed.unpack(*packed.pack(tensor), tensor.shape)
        assert torch.equal(unpacked.view(torch.int16), tensor.view(torch.int16))
    finally:
        kernels.library.cache_clear()


def test_a_failed_build_is_logged_and_the_numpy_code_runs(monkeypatch, tmp_path, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: error: nothing works' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("SAE_MERGING_CACHE", str(tmp_path / "cache"))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None
        assert "nothing works" in caplog.text
    finally:
        kernels.library.cache_clear()


def test_a_fresh_tensor_is_an_ordinary_writable_tensor():
    tensor = kernels.fresh((3, 1 << 22), torch.bfloat16)  # (24 MB: asks for huge pages)
    assert tensor.shape == (3, 1 << 22) and tensor.dtype == torch.bfloat16 and tensor.is_contiguous()
    tensor.fill_(1.5)
    assert float(tensor.float().sum()) == 1.5 * 3 * (1 << 22)


def test_a_mask_with_more_entries_than_values_is_refused_not_read_past():
    tensor = _awkward(1000, torch.bfloat16, 0.6, seed=7)
    mask, values = packed.pack(tensor)
    damaged = packed.PackedTensor(mask, values[:-3], tensor.shape)  # (three values lost)
    with pytest.raises(ValueError, match="more entries .* than it has values"):
        for _ in damaged.chunks(256):
            pass


def test_sae_childs_stored_files_are_the_same_bytes_with_and_without_the_loops(tmp_path, monkeypatch):
    """End to end: two pruned bf16 archive members (global pruning to 60%, chunks and samples
    smaller than the tensors), SAE's child made and stored with the compiled loops and with the
    NumPy/torch ones: the same file, byte for byte."""
    from types import SimpleNamespace

    from sae_merging.methods.sae import SAE
    from sae_merging.runtime.context import Member
    from sae_merging.runtime.store import TENSORS_FILE, IndividualStore
    from sae_merging.sparsity.measures import zero_count
    from sae_merging.sparsity.scoring import SparsityScoring

    monkeypatch.setattr(magnitude, "CHUNK", 1000)
    monkeypatch.setattr(magnitude, "SAMPLE", 512)
    shapes = {"embed.weight": (300, 64), "layers.0.q.weight": (64, 64), "layers.0.up.weight": (96, 64)}
    shapes |= {"layers.0.norm.weight": (64,), "layers.1.o.weight": (64, 64)}
    sae = SAE(schedule=None, pruner=magnitude.MagnitudePruner("global"), scoring=SparsityScoring(zero_count))
    archive = IndividualStore(tmp_path / "archive")
    for seed, ident in ((1, "a"), (2, "b")):
        model = {
            name: _awkward(int(torch.Size(s).numel()), torch.bfloat16, 0.1, seed).reshape(s)
            for name, s in shapes.items()
        }
        archive.save(ident, sae.pruner.prune(model, 0.6))
    ctx = SimpleNamespace(store=archive, timer=None, device=torch.device("cpu"))
    members = [Member(ident=ident, origin="test") for ident in "ab"]
    files = []
    for folder in ("compiled", "numpy"):
        if folder == "numpy":
            monkeypatch.setattr(kernels, "library", lambda: None)
        child = sae._make_child(ctx, *members, 0.55, 0.4, 0.6, None)
        store = IndividualStore(tmp_path / folder)
        store.save("child", child.tensors)
        files.append((store.path("child") / TENSORS_FILE).read_bytes())
    assert files[0] == files[1]


def test_inputs_the_loops_cannot_take_as_pointers_go_to_numpy_and_torch(without_kernels):
    """Strided or broadcast inputs, and a packed tensor whose mask is too short: the compiled
    loops are not handed memory they would misread."""
    a = _awkward(200, torch.bfloat16, 0.3, seed=8)
    one = torch.full((1,), 3.0, dtype=torch.bfloat16)
    strided = _awkward(400, torch.bfloat16, 0.5, seed=9)[::2]
    got = (functions.linear(a, one, 0.5), packed.pack(strided))
    with pytest.raises(ValueError, match="its mask has 3 bytes, it needs 8"):
        packed.PackedTensor(torch.zeros(3, dtype=torch.uint8), a[:0], (64,))
    without_kernels()
    assert torch.equal(got[0].view(torch.int16), functions.linear(a, one, 0.5).view(torch.int16))
    mask, values = packed.pack(strided)
    assert torch.equal(got[1][0], mask) and torch.equal(got[1][1].view(torch.int16), values.view(torch.int16))


def test_a_count_outside_the_key_range_equals_numpys(without_kernels):
    chunk = _awkward(5000, torch.bfloat16, 0.3, seed=10)
    cases = [((-5, 40000), (40000, 50000)), ((-5, 40000), (-40000, 10)), ((7,), (0, 1 << 15))]
    space = magnitude.KeySpace(torch.bfloat16)
    got = [magnitude.CountRequest(space, t, c).count(chunk, magnitude.Scratch()) for t, c in cases]
    without_kernels()
    for (thresholds, collect), (counts, inside) in zip(cases, got, strict=True):
        want_counts, want_inside = magnitude.CountRequest(space, thresholds, collect).count(
            chunk, magnitude.Scratch()
        )
        assert counts == want_counts and torch.equal(inside, want_inside)


def test_a_compiler_command_with_arguments_is_found(monkeypatch):
    monkeypatch.setenv("CC", "cc -O2")
    assert kernels._compiler() == [kernels.shutil.which("cc"), "-O2"]
