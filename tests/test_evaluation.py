"""Answer extraction on real GSM8K answers, and the built-in evaluator against lm-eval's harness."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from conftest import FIXTURES

from sae_merging.evaluation.builtin import BuiltinEvaluator, cut_at_stops
from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator, task_config
from sae_merging.models.io import load_model, load_tokenizer
from sae_merging.tasks.base import TaskData, read_jsonl
from sae_merging.tasks.extraction import INVALID, extract, is_correct, normalize
from sae_merging.tasks.gsm8k import STOP

GSM8K_ROWS = read_jsonl(FIXTURES / "gsm8k" / "test.jsonl") + read_jsonl(FIXTURES / "gsm8k" / "train.jsonl")


def final_number(answer: str) -> str:
    """The `#### N` number of a GSM8K answer, as written."""
    return re.search(r"#### (.+)$", answer).group(1).strip()


@pytest.mark.parametrize("row", GSM8K_ROWS, ids=lambda row: final_number(row["answer"]))
def test_extraction_reads_real_gsm8k_answers(row):
    answer, number = row["answer"], final_number(row["answer"])
    assert extract(answer, "strict") == number
    assert normalize(extract(answer, "flexible")) == normalize(number) == number.replace(",", "")
    for how in ("strict", "flexible"):
        assert is_correct(answer, answer, how)  # a worked reference is normalized to its number
        assert is_correct(answer, number.replace(",", ""), how)
        assert not is_correct(answer, str(int(number.replace(",", "")) + 1), how)


@pytest.mark.parametrize(
    "generation, reference, strict, flexible",
    [
        ("2 * 617 = 1234\n#### 1,234", "1234", True, True),
        ("She pays $18.", "18", False, True),  # no `####`: strict finds nothing
        ("#### $18", "18", False, True),  # strict's number may not carry a dollar sign
        ("The change is -10 dollars.\n#### -10", "-10", True, True),
        ("#### 12\nQuestion: then 13 more", "12", True, False),  # strict: first `####`; flexible: last
        ("#### 5,600.00", "5600", False, False),  # lm-eval compares strings, not values
        ("The total is $1,450,000.", "1,450,000", False, True),
        ("no number at all", "5", False, False),
    ],
)
def test_extraction_hand_cases(generation, reference, strict, flexible):
    assert is_correct(generation, reference, "strict") is strict
    assert is_correct(generation, reference, "flexible") is flexible


def test_extraction_without_answer_is_invalid():
    assert extract("nothing here", "strict") == extract("nothing", "flexible") == INVALID
    with pytest.raises(ValueError, match="unknown answer extraction"):
        extract("#### 1", "loose")


def test_generate_config_is_lm_evals_gsm8k(tmp_path: Path):
    """The metric, filters and stop strings we hand lm-eval are those of its own gsm8k task."""
    gsm8k = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    task = TaskData("gsm8k", "generate", {}, STOP, 256)
    config = task_config(task, tmp_path / "data.jsonl", tmp_path / "cache", "x")
    assert config["metric_list"] == gsm8k["metric_list"]
    assert config["filter_list"] == gsm8k["filter_list"]
    assert config["generation_kwargs"]["until"] == gsm8k["generation_kwargs"]["until"]
    assert config["doc_to_text"] == "{{prompt}}" and config["output_type"] == gsm8k["output_type"]


def test_lm_eval_evaluator_refuses_unknown_extraction():
    with pytest.raises(ValueError, match="extraction"):
        LmEvalEvaluator(extraction="loose")


def both_backends(model, tokenizer, task, examples, **kwargs):
    builtin = BuiltinEvaluator(batch_size=8, **kwargs).evaluate(model, tokenizer, task, examples)
    harness = LmEvalEvaluator(batch_size=8, **kwargs).evaluate(model, tokenizer, task, examples)
    return builtin, harness


@pytest.mark.parametrize("expert", ["math", "multilingual"])
def test_backends_agree_on_the_lab(micro_lab, expert):
    model, tokenizer = load_model(micro_lab.experts[expert]), load_tokenizer(micro_lab.experts[expert])
    for task in micro_lab.tasks():
        examples = task.split("test")
        builtin, harness = both_backends(model, tokenizer, task, examples)
        assert harness.uids == builtin.uids == [e.uid for e in examples]
        assert harness.outputs == builtin.outputs  # same generations / same chosen options
        assert harness.correct == builtin.correct
        assert harness.accuracy == builtin.accuracy


@pytest.fixture(scope="module")
def math_expert(micro_lab):
    path = micro_lab.experts["math"]
    task = next(t for t in micro_lab.tasks() if t.kind == "generate")
    return load_model(path), load_tokenizer(path), task, task.split("test")[:12]


def test_backends_agree_on_right_and_wrong_answers(math_expert):
    """The lab's tiny expert rarely gets a problem right, so half the references are set to
    what it answers: both backends must then mark exactly those correct."""
    model, tokenizer, task, examples = math_expert
    outputs = BuiltinEvaluator().evaluate(model, tokenizer, task, examples).outputs
    relabelled = [
        dataclasses.replace(e, answer=extract(o, "flexible")) if i % 2 == 0 else e
        for i, (e, o) in enumerate(zip(examples, outputs))
    ]
    builtin, harness = both_backends(model, tokenizer, task, relabelled, extraction="flexible")
    assert harness.correct == builtin.correct
    assert True in builtin.correct and False in builtin.correct


def test_generation_stops_at_every_end_token_of_the_model(math_expert):
    """Instruct models end on several tokens (Llama 3: end_of_text, eom, eot) while their
    tokenizer names one: both backends stop where the model's generation config says."""
    model, tokenizer, task, examples = math_expert
    first = BuiltinEvaluator().evaluate(model, tokenizer, task, examples[:4]).outputs[0]
    second_token = tokenizer(first, add_special_tokens=False)["input_ids"][1]
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, second_token]
    try:
        builtin, harness = both_backends(model, tokenizer, task, examples[:4])
    finally:
        model.generation_config.eos_token_id = original
    assert harness.outputs == builtin.outputs
    assert len(builtin.outputs[0]) < len(first)


def test_registered_task_scores_its_own_documents(math_expert, monkeypatch):
    """A registered lm-eval task replaces our examples; its samples map to uids per subtask,
    in document order, under the chosen filter."""
    model, tokenizer, task, examples = math_expert

    def sample(doc_id: int, filter_name: str, right: bool) -> dict:
        return {
            "doc_id": doc_id,
            "filter": filter_name,
            "resps": [[f"#### {doc_id}"]],
            "exact_match": float(right),
        }

    samples = {
        "gsm8k": [
            sample(1, "strict-match", True),
            sample(0, "strict-match", False),
            sample(0, "flexible-extract", True),
            sample(1, "flexible-extract", False),
        ]
    }
    calls = []
    monkeypatch.setattr(
        LmEvalEvaluator, "_run", lambda self, lm, name, **kwargs: calls.append((name, kwargs)) or samples
    )
    evaluator = LmEvalEvaluator(registered={task.name: "gsm8k"}, extraction="flexible", num_fewshot=5)
    scores = evaluator.evaluate(model, tokenizer, task, examples)
    assert calls == [("gsm8k", {"num_fewshot": 5})]
    assert scores.uids == ["gsm8k/0", "gsm8k/1"]
    assert scores.correct == [True, False]
    assert scores.outputs == ["#### 0", "#### 1"]


def byte_level_tokenizer():
    """A small byte-level BPE tokenizer (GPT-2 / SmolLM2 style): a character outside its merges
    is several one-byte tokens, the hardest case for a stop check that decodes only a tail."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["Question: how many apples? Answer: 12 apples.\n\n"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def test_stop_check_on_the_tail_stops_where_a_full_decode_would():
    """At every step up to the first stop, the tail-only check says what decoding the whole
    generation says (so generation stops at the same token), on texts mixing multi-byte
    characters, stop strings split across tokens, and near misses."""
    import random

    from sae_merging.evaluation.builtin import stop_seen

    tokenizer = byte_level_tokenizer()
    stops = (*STOP, "\n\n")
    pieces = ("apples", " 12", "日本語", "é", "Quest", "ion", ":", "Question", "\n", " ")
    pieces += ("</", "s>", "<|im_", "end|>")
    rng = random.Random(0)
    hits = 0
    for _ in range(60):
        ids = tokenizer("".join(rng.choice(pieces) for _ in range(rng.randint(5, 40))))["input_ids"]
        for k in range(1, len(ids) + 1):
            full = any(stop in tokenizer.decode(ids[:k]) for stop in stops)
            assert stop_seen(tokenizer, ids[:k], stops) is full, (ids[:k], tokenizer.decode(ids[:k]))
            if full:
                hits += 1
                break
    assert hits > 20


def test_last_logits_of_a_padded_batch_are_each_rows_own(math_expert):
    """Right padding without a mask: each row's last-position logits equal those of the row
    run alone (the batch layout of one-token multiple choice)."""
    from sae_merging.evaluation.builtin import last_logits

    model, tokenizer, _, examples = math_expert
    rows = [tokenizer(e.prompt)["input_ids"] for e in examples[:6]]
    assert len({len(r) for r in rows}) > 1
    batched = last_logits(model, rows, tokenizer.pad_token_id)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows]
    torch.testing.assert_close(batched, torch.stack(alone), rtol=0, atol=1e-5)


def test_a_shared_header_runs_once_and_changes_no_score(micro_lab):
    """One-token options after a header every prompt starts with: the header's KV cache, run
    once and extended by every batch, gives the log-likelihoods of running each prompt whole
    (to 1e-5), so the same answers."""
    from sae_merging.evaluation.builtin import choice_requests, shared_prefix_cache

    path = micro_lab.experts["multilingual"]
    model, tokenizer = load_model(path), load_tokenizer(path)
    task = next(t for t in micro_lab.tasks() if t.kind == "multiple_choice")
    header = "Answer with the letter of the correct option. " * 3
    examples = [dataclasses.replace(e, prompt=header + e.prompt) for e in task.split("test")[:10]]
    requests, _ = choice_requests(tokenizer, examples)
    assert {len(continuation) for _, continuation in requests} == {1}
    shared, cache = shared_prefix_cache(model, [context for context, _ in requests], 16)
    assert shared >= 16 and cache is not None
    whole = BuiltinEvaluator(batch_size=3, min_shared_prefix=10**6)
    headed = BuiltinEvaluator(batch_size=3)
    expected = whole.loglikelihoods(model, tokenizer, requests)
    got = headed.loglikelihoods(model, tokenizer, requests)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-5)
    assert headed.choose(model, tokenizer, examples) == whole.choose(model, tokenizer, examples)


@pytest.fixture(scope="module")
def random_llama(math_expert):
    """A randomly initialised two-layer Llama with grouped-query attention over the lab's
    tokenizer, one in 60 of its tokens an end token and no stop strings: greedy continuations
    of very different lengths (the lab's experts answer every prompt alike)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, task, examples = math_expert
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = list(range(3, len(tokenizer), 60))
    return model, tokenizer, dataclasses.replace(task, stop=(), max_new_tokens=40), task.split("test")


def test_continuous_batching_decodes_each_prompt_as_if_alone(random_llama, monkeypatch):
    """Three slots for 24 prompts: rows finish at different steps, waiting prompts take
    their places, the cache's columns move back to the start and idle slots are dropped at the
    end; every continuation equals the prompt decoded alone and `model.generate`'s greedy one."""
    from sae_merging.evaluation import builtin

    model, tokenizer, task, examples = random_llama
    calls: dict[str, int] = {"place": 0, "_rewind": 0, "shrink": 0}
    for name in calls:
        method = getattr(builtin._Slots, name)

        def counted(self, *args, _method=method, _name=name):
            calls[_name] += 1
            return _method(self, *args)

        monkeypatch.setattr(builtin._Slots, name, counted)
    prompts = [e.prompt for e in examples]
    batched = BuiltinEvaluator(batch_size=3).generate(model, tokenizer, prompts, task)
    assert calls["place"] > 3 and calls["_rewind"] > 1 and calls["shrink"] >= 1, calls
    lengths = [len(tokenizer(t)["input_ids"]) for t in batched]
    assert len(set(lengths)) > 4, lengths  # rows did finish at different steps
    alone = [BuiltinEvaluator(batch_size=1).generate(model, tokenizer, [p], task)[0] for p in prompts]
    assert batched == alone
    stops = tuple(task.stop) + (tokenizer.eos_token,)
    with torch.no_grad():
        for prompt, text in zip(prompts, batched):
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = model.generate(ids, max_new_tokens=task.max_new_tokens, do_sample=False, pad_token_id=0)
            assert (
                cut_at_stops(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), stops)
                == text
            )


def test_slots_give_each_rows_own_logits(random_llama):
    """Rows of different lengths placed into slots at different steps, the oldest released and
    its slot refilled every few steps until the columns have been rewound: each slot's logits
    equal its whole sequence run alone (to 1e-5), idle slot included in the batch."""
    from sae_merging.evaluation.builtin import _Batch, _Slots

    model, tokenizer, _, examples = random_llama
    rows = [tokenizer(e.prompt)["input_ids"] for e in examples[:4]]
    assert len({len(r) for r in rows}) > 1
    widest = max(len(r) for r in rows) + 12
    slots, sequences, age = _Slots(model, 4, widest), {}, {}

    def place(slot: int, row: list[int]) -> None:
        part = _Batch(model, 0)
        part.extend([row], keep=1)
        slots.place([slot], part)
        sequences[slot], age[slot] = list(row), 0

    rewinds = 0
    with torch.no_grad():
        for slot in range(3):  # slot 3 stays idle throughout
            place(slot, rows[slot])
        for cycle in range(12):
            for token in range(5 + cycle, 9 + cycle):
                rewinds += slots.end == slots.attention.shape[1]
                for slot in sequences:
                    sequences[slot].append(token)
                    age[slot] += 1
                logits = slots.step([token] * len(slots))
            oldest = max(age, key=age.get)
            slots.release([oldest])
            del sequences[oldest], age[oldest]
            place(oldest, rows[cycle % 4])
        for slot in sequences:
            sequences[slot].append(3)
        logits = slots.step([3] * len(slots))
        assert rewinds >= 1
        for slot, sequence in sequences.items():
            expected = model(input_ids=torch.tensor([sequence])).logits[0, -1]
            torch.testing.assert_close(logits[slot], expected, rtol=0, atol=1e-5)


def test_prompt_passes_are_small_on_a_cpu_and_the_token_budget_elsewhere():
    """prefill_tokens=None: 1,024 padded tokens per pass over prompts on a CPU (as fast there,
    less memory), the whole token budget on an accelerator; a set value is kept."""
    from types import SimpleNamespace

    from sae_merging.evaluation.builtin import CPU_PREFILL_TOKENS

    cpu, gpu = (SimpleNamespace(device=torch.device(kind)) for kind in ("cpu", "cuda"))
    default = BuiltinEvaluator(token_budget=4096)
    assert default._prefill_tokens(cpu) == CPU_PREFILL_TOKENS == 1024
    assert default._prefill_tokens(gpu) == 4096
    assert BuiltinEvaluator(prefill_tokens=300)._prefill_tokens(gpu) == 300
