"""Tasks of one's own: JSONL tasks and lm-eval tasks, with chat templates and few-shot.

- Parity: the built-in evaluator on an lm-eval task YAML (`generate_until`, `multiple_choice`),
  with and without the chat template, equals lm-eval's HF backend run on the same YAML by
  `lm_eval.simple_evaluate(..., apply_chat_template=..., num_fewshot=...)` item by item: the
  same prompts, the same generations / chosen options, the same per-item metric. A JSONL task
  equals the lm-eval YAML it describes the same way.
- What the built-in evaluator cannot score (a `loglikelihood` task) lm-eval scores itself, and
  says so once.
- Bad files: each error names the file and the line.
- A sweep over two JSONL tasks on the micro lab's models.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lm_eval
import pytest
import yaml
from conftest import FIXTURES
from lm_eval.tasks import TaskManager

from sae_merging.evaluation.builtin import BuiltinEvaluator
from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator
from sae_merging.models.io import load_model, load_tokenizer
from sae_merging.tasks.base import render_prompts
from sae_merging.tasks.jsonl import load_jsonl_task
from sae_merging.tasks.lm_eval_task import load_lm_eval_task
from sae_merging.utils.settings import InputError

OWN = FIXTURES / "own_tasks"
# ChatML, as SmolLM2-Instruct's template lays turns out (its default system prompt left out)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def split_files(tmp_path: Path, name: str) -> tuple[str, str]:
    """The fixture's first 8 rows as the opt file, the rest as the test file. The micro lab's
    expert answers every sum with a run of 1s: every other test sum's answer is set to 1, so
    both right and wrong answers are scored."""
    items = rows(OWN / f"{name}.jsonl")
    if name == "sums":
        items[8::2] = [{**item, "answer": "1"} for item in items[8::2]]
    return write_jsonl(tmp_path / f"{name}_opt.jsonl", items[:8]), write_jsonl(
        tmp_path / f"{name}_test.jsonl", items[8:]
    )


def yaml_task(tmp_path: Path, name: str, kind: str) -> Path:
    """An lm-eval task YAML over the fixture's rows (opt file: training split), as a user writes it."""
    opt, test = split_files(tmp_path, "sums" if kind == "generate_until" else "opposites")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": opt, "test": test}},
        "training_split": "train",
        "test_split": "test",
        "output_type": kind,
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1},
    }
    if kind == "generate_until":
        config.update(
            doc_to_target="{{answer}}",
            fewshot_config={"sampler": "default", "doc_to_target": "{{target}}"},  # shots show the working
            generation_kwargs={"until": ["\n"], "max_gen_toks": 24, "do_sample": False},
            filter_list=[
                {
                    "name": "number",
                    "filter": [{"function": "regex", "regex_pattern": r"(\d+)"}, {"function": "take_first"}],
                }
            ],
            metric_list=[{"metric": "exact_match", "ignore_case": True}],
        )
    elif kind == "multiple_choice":
        config.update(
            doc_to_choice="{{choices}}",
            doc_to_target="{{gold}}",
            metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}],
        )
    else:  # loglikelihood: is the gold choice the greedy continuation
        config.update(doc_to_target="{{' ' + choices[gold]}}", metric_list=[{"metric": "acc"}])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lm_eval_samples(model, tokenizer, path: Path, name: str, shots: int, chat: bool) -> list[dict]:
    """lm-eval's logged samples of the task YAML, by document, run as `lm_eval --tasks NAME
    --num_fewshot SHOTS [--apply_chat_template]` runs it (few-shot as turns under the template)."""
    from lm_eval.models.huggingface import HFLM

    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
        tasks=[name],
        task_manager=TaskManager(include_path=str(path.parent), include_defaults=False),
        num_fewshot=shots,
        apply_chat_template=chat,
        fewshot_as_multiturn=chat,
        log_samples=True,
        bootstrap_iters=0,
    )
    return sorted(results["samples"][name], key=lambda s: (s["doc_id"], s["filter"]))


@pytest.fixture(scope="module")
def tiny(micro_lab):
    """The micro lab's math expert, its tokenizer given a ChatML chat template."""
    path = micro_lab.experts["math"]
    tokenizer = copy.deepcopy(load_tokenizer(path))
    tokenizer.chat_template = CHATML
    return load_model(path), tokenizer


def check_parity(model, tokenizer, task, samples, metric: str, filter_name: str, mixed: bool = True) -> None:
    """Item by item: prompts, outputs and the per-item metric of the built-in evaluator equal
    lm-eval's (`mixed`: and both right and wrong items were compared)."""
    examples = task.split("test")
    kept = [s for s in samples if s["filter"] == filter_name]
    assert [s["doc_id"] for s in kept] == list(range(len(examples)))
    prompts = render_prompts(task, examples, tokenizer)
    assert prompts == [s["arguments"][0][0] for s in kept]
    scores = BuiltinEvaluator(batch_size=4).evaluate(model, tokenizer, task, examples)
    assert scores.correct == [s[metric] == 1 for s in kept]
    assert not mixed or (any(scores.correct) and not all(scores.correct))
    if task.kind == "generate":
        assert scores.outputs == [s["resps"][0][0] for s in kept]
    else:
        lls = [[float(r[0][0]) for r in s["resps"]] for s in kept]
        assert scores.outputs == [str(max(range(len(x)), key=lambda i, x=x: (x[i], -i))) for x in lls]


def yaml_parity(model, tokenizer, tmp_path: Path, kind: str, chat: bool, mixed: bool = True):
    """The task YAML of `kind`, 2-shot, by lm-eval and by the built-in evaluator, item by item."""
    path = yaml_task(tmp_path, f"own_{kind}", kind)
    samples = lm_eval_samples(model, tokenizer, path, f"own_{kind}", 2, chat)
    task = load_lm_eval_task(str(path), num_fewshot=2, chat_template=chat)
    assert task.scorer.unsupported is None
    if chat:
        assert all(e.messages[0][0] == "user" and len(e.messages) == 5 for e in task.split("test"))
    metric, filter_name = ("exact_match", "number") if kind == "generate_until" else ("acc", "none")
    check_parity(model, tokenizer, task, samples, metric, filter_name, mixed)
    return path, samples


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("kind", ["generate_until", "multiple_choice"])
def test_builtin_evaluator_equals_lm_eval_on_a_task_yaml(tiny, tmp_path, kind, chat):
    model, tokenizer = tiny
    path, samples = yaml_parity(model, tokenizer, tmp_path, kind, chat)
    if kind == "multiple_choice":  # the task's second metric, length-normalised
        task = load_lm_eval_task(str(path), num_fewshot=2, chat_template=chat, metric="acc_norm")
        check_parity(model, tokenizer, task, samples, "acc_norm", "none")


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("kind", ["generate", "multiple_choice"])
def test_a_jsonl_task_equals_its_lm_eval_yaml(tiny, tmp_path, kind, chat):
    """A JSONL task's prompts and scores are what lm-eval gives for the YAML it stands for."""
    model, tokenizer = tiny
    lm_kind = "generate_until" if kind == "generate" else "multiple_choice"
    path = yaml_task(tmp_path, f"own_{kind}", lm_kind)
    samples = lm_eval_samples(model, tokenizer, path, f"own_{kind}", 3, chat)
    files = yaml.safe_load(path.read_text())["dataset_kwargs"]["data_files"]
    settings = {"stop": ["\n"], "max_new_tokens": 24, "extract": r"(\d+)"} if kind == "generate" else {}
    task = load_jsonl_task(
        f"own_{kind}", kind, opt_source=files["train"], test_source=files["test"], num_fewshot=3,
        chat_template=chat, **settings,
    )  # fmt: skip
    metric, filter_name = ("exact_match", "number") if kind == "generate" else ("acc", "none")
    check_parity(model, tokenizer, task, samples, metric, filter_name)


def test_the_lm_eval_backend_runs_the_tasks_own_requests(tiny, tmp_path):
    model, tokenizer = tiny
    path = yaml_task(tmp_path, "own_mc", "multiple_choice")
    task = load_lm_eval_task(str(path), num_fewshot=1, chat_template=True)
    examples = task.split("test")
    builtin = BuiltinEvaluator().evaluate(model, tokenizer, task, examples)
    harness = LmEvalEvaluator(batch_size=4).evaluate(model, tokenizer, task, examples)
    assert harness.correct == builtin.correct
    assert harness.uids == builtin.uids == [e.uid for e in examples]


@pytest.mark.parametrize("kind", ["generate", "multiple_choice"])
def test_the_lm_eval_backend_scores_a_jsonl_task_as_the_builtin_evaluator(tiny, tmp_path, kind):
    """`evaluator=lm_eval` runs a JSONL task through lm-eval with the task's extraction and metric."""
    model, tokenizer = tiny
    opt, test = split_files(tmp_path, "sums" if kind == "generate" else "opposites")
    settings = {"stop": ["\n"], "max_new_tokens": 24, "extract": r"(\d+)"} if kind == "generate" else {}
    task = load_jsonl_task("own", kind, opt_source=opt, test_source=test, num_fewshot=1, chat_template=True,
                           metric="acc_norm", **settings)  # fmt: skip
    builtin = BuiltinEvaluator().evaluate(model, tokenizer, task, task.split("test"))
    harness = LmEvalEvaluator(batch_size=4).evaluate(model, tokenizer, task, task.split("test"))
    assert harness.correct == builtin.correct and any(builtin.correct) and not all(builtin.correct)


def test_the_paper_loaders_take_the_chat_template_and_shots():
    """GSM8K and MMLU-ProX: chat turns are the plain prompt's shots and question, turn by turn;
    MMLU-ProX's letters lose their space to the target delimiter (dropped under the template),
    and without either option every example is what it was."""
    from sae_merging.tasks.base import continuations
    from sae_merging.tasks.gsm8k import load_gsm8k
    from sae_merging.tasks.mmlu_prox import load_mmlu_prox

    plain = load_gsm8k(str(FIXTURES / "gsm8k"), num_fewshot=2)
    chat = load_gsm8k(str(FIXTURES / "gsm8k"), num_fewshot=2, chat_template=True)
    for a, b in zip(plain.split("test"), chat.split("test"), strict=True):
        assert a.prompt == b.prompt and not a.messages
        (_, q1), (_, a1), (_, q2), (_, a2), (_, question) = b.messages
        assert b.prompt == f"{q1} {a1}\n\n{q2} {a2}\n\n{question}" and q1.startswith("Question: ")
        assert question == a.prompt.rsplit("\n\n", 1)[-1] and question.endswith("\nAnswer:")
    sources = (str(FIXTURES / "mmlu_prox_lite_en"), str(FIXTURES / "mmlu_pro_validation"))
    zero = load_mmlu_prox(*sources)
    shots = load_mmlu_prox(*sources, num_fewshot=1, chat_template=True)
    for a, b in zip(zero.split("test"), shots.split("test"), strict=True):
        (_, shot), (_, letter), (_, question) = b.messages
        assert question == a.prompt and b.prompt == f"{shot} {letter}\n\n{a.prompt}"
        assert continuations(zero, a) == list(a.choices) == [f" {c}" for c in b.choices]
        assert continuations(shots, b) == list(b.choices)


def test_other_request_types_fall_back_to_lm_eval(tiny, tmp_path, capsys):
    model, tokenizer = tiny
    path = yaml_task(tmp_path, "own_ll", "loglikelihood")
    task = load_lm_eval_task(str(path), num_fewshot=1)
    assert task.scorer.unsupported == "its requests are loglikelihood"
    samples = lm_eval_samples(model, tokenizer, path, "own_ll", 1, False)
    capsys.readouterr()
    scores = BuiltinEvaluator().evaluate(model, tokenizer, task, task.split("test"))
    BuiltinEvaluator().evaluate(model, tokenizer, task, task.split("test"))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: task own_ll: its requests are loglikelihood, so lm-eval itself scores it "
        "(slower than the built-in evaluator)"
    ]
    assert scores.correct == [s["acc"] == 1 for s in samples]


def test_opt_prompts_never_show_their_own_answer(tmp_path):
    """The optimization split is the few-shot source: a prompt's shots never include itself."""
    path = yaml_task(tmp_path, "own_gen", "generate_until")
    task = load_lm_eval_task(str(path), num_fewshot=7)  # all other 7 of the 8 opt rows
    for example in task.split("opt"):
        own = example.prompt.rsplit("\n\n", 1)[-1]
        assert example.prompt.count(own) == 1
    jsonl = load_jsonl_task("sums", source=str(OWN / "sums.jsonl"), test_fraction=0.25, num_fewshot=8)
    for example in jsonl.split("opt"):
        own = example.prompt.rsplit("\n\n", 1)[-1]
        assert example.prompt.count(own) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "2+2="}', "missing field 'answer'"),
        ('{"prompt": 4, "answer": "4"}', "'prompt' must be text"),
        ("not json", "not valid JSON"),
    ],
)
def test_a_bad_generate_line_is_named_with_file_and_line(tmp_path, line, message):
    good = json.dumps({"prompt": "1+1=", "answer": "2"})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n")
    with pytest.raises(InputError, match=rf"^{path}:4: {message}"):
        load_jsonl_task("bad", source=str(path))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "choices": ["a", "b"]}, "missing field 'gold'"),
        (
            {"prompt": "p", "choices": ["a", "b"], "gold": 2},
            "'gold' must be the right choice's index, 0 to 1, got 2",
        ),
        ({"prompt": "p", "choices": "ab", "gold": 0}, "'choices' must be a list of at least two texts"),
    ],
)
def test_a_bad_multiple_choice_line_is_named_with_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "choices": ["a", "b"], "gold": 1}) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(InputError, match=rf"^{path}:2: {message}"):
        load_jsonl_task(
            "bad", "multiple_choice", opt_source=str(OWN / "opposites.jsonl"), test_source=str(path)
        )


def jsonl_run_config(overrides: list[str] = ()):
    """The smoke experiment (SAE on the micro lab's models) optimizing two JSONL tasks: the
    sums by generation (their working as few-shot text) and the opposites by choice."""
    from conftest import compose_config
    from omegaconf import OmegaConf, open_dict

    cfg = compose_config(["experiment=smoke", "progress=false", "schedule.steps=2", "task=jsonl", *overrides])
    with open_dict(cfg):
        cfg.task.opt_size = {}
        cfg.task.tasks = [
            {**OmegaConf.to_container(cfg.task.tasks[0]), "name": "sums", "source": str(OWN / "sums.jsonl"),
             "num_fewshot": 1, "stop": ["\n"], "max_new_tokens": 24, "extract": "#### (\\d+)"},
            {**OmegaConf.to_container(cfg.task.tasks[0]), "name": "opposites", "kind": "multiple_choice",
             "source": str(OWN / "opposites.jsonl"), "metric": "acc_norm"},
        ]  # fmt: skip
    return cfg


def test_sae_searches_over_two_jsonl_tasks(micro_lab, tmp_path):
    from sae_merging.runtime import runner
    from sae_merging.runtime.preflight import preflight

    cfg = jsonl_run_config()
    preflight(cfg, tmp_path / "run")
    results = runner.run(cfg, tmp_path / "run")
    assert set(results["test"]) == {"sums", "opposites", "mean"}
    items = [json.loads(line) for line in (tmp_path / "run" / "test_items.jsonl").read_text().splitlines()]
    by_task = {name: [i["correct"] for i in items if i["task"] == name] for name in ("sums", "opposites")}
    assert {name: len(c) for name, c in by_task.items()} == {"sums": 6, "opposites": 6}  # test_fraction 0.5
    for name, correct in by_task.items():
        assert results["test"][name] == pytest.approx(sum(correct) / len(correct))


def run_py(*arguments: str) -> list[str]:
    """stderr lines of `python run.py ARGUMENTS` that must exit 2 before torch is imported."""
    import subprocess
    import sys

    command = [sys.executable, "-X", "importtime", "run.py", "experiment=smoke", "~task.opt_size", *arguments]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not {"torch", "transformers", "lm_eval", "datasets"} & imported
    return [line for line in done.stderr.splitlines() if not line.startswith("import time:")]


def test_a_bad_jsonl_file_stops_the_run_before_any_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    lines = run_py("task=jsonl", f"task.tasks.0.source={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert lines == [
        f"config error: task.tasks[0].source: {bad}:2: missing field 'answer' "
        "(each line needs ['prompt', 'answer'])"
    ]


def test_a_task_yamls_missing_data_file_stops_the_run(tmp_path):
    path = yaml_task(tmp_path, "own_gen", "generate_until")
    (tmp_path / "sums_test.jsonl").unlink()
    lines = run_py("task=lm_eval", f"task.tasks.0.task={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert lines == [
        f"config error: task.tasks[0].task: {path}: "
        f"data_files.test={str(tmp_path / 'sums_test.jsonl')!r}: no such file"
    ]


# --- SmolLM2-135M-Instruct and its own chat template (slow) ----------------------------------


@pytest.mark.slow
def test_smollm2_chat_prompts_are_its_template(smollm2, tmp_path):
    """With SmolLM2-Instruct's own template (its default system turn, ChatML), a 1-shot JSONL
    item is the shot as a user and an assistant turn, then the question, then the opened
    assistant turn; a multiple-choice option follows it without the target delimiter."""
    _, tokenizer = smollm2
    opt, test = split_files(tmp_path, "opposites")
    task = load_jsonl_task("opposites", "multiple_choice", opt_source=opt, test_source=test, num_fewshot=1,
                           chat_template=True)  # fmt: skip
    example = task.split("test")[0]
    (_, shot_question), (_, shot_answer), (_, question) = example.messages
    assert render_prompts(task, [example], tokenizer) == [
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{shot_question}<|im_end|>\n<|im_start|>assistant\n{shot_answer}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ]
    assert question == rows(Path(test))[0]["prompt"]


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("kind", ["generate_until", "multiple_choice"])
def test_smollm2_builtin_evaluator_equals_lm_eval(smollm2, tmp_path, kind, chat):
    yaml_parity(*smollm2, tmp_path, kind, chat, mixed=False)


@pytest.mark.slow
def test_smollm2_sae_run_on_a_task_yaml_under_its_chat_template(smollm2, tmp_path):
    """`run.py model=hf task=lm_eval` with the chat template on, as docs/your-own-tasks.md runs
    it (two experts made from SmolLM2 by seeded noise, one tiny generation; the base saved as a
    folder, as the GGUF's own loading is tested in test_real_model.py): the run ends with
    results.json, and its test items' correctness is what lm-eval itself gives the saved model
    on the same YAML with `--apply_chat_template --num_fewshot 2`."""
    import subprocess
    import sys

    import torch

    from sae_merging.models.io import save_model_folder, tied_aliases

    base, tokenizer = smollm2
    tensors = {k: v.detach() for k, v in base.state_dict().items() if k not in tied_aliases(base.config)}
    experts = []
    base_folder = save_model_folder(tmp_path / "base", tensors, base.config, tokenizer)
    for seed in (1, 2):
        noise = torch.Generator().manual_seed(seed)
        moved = {k: t + 0.01 * t.float().std().nan_to_num() * torch.randn(t.shape, generator=noise)
                 for k, t in tensors.items()}  # fmt: skip
        experts.append(save_model_folder(tmp_path / f"expert{seed}", moved, base.config, tokenizer))
    path = yaml_task(tmp_path, "own_mc", "multiple_choice")
    run = tmp_path / "run"
    command = [
        sys.executable, "run.py", "model=hf", f"model.base={base_folder}",
        f"model.experts=[{experts[0]},{experts[1]}]", "task=lm_eval", f"task.tasks.0.task={path}",
        "task.tasks.0.num_fewshot=2", "task.tasks.0.chat_template=true", "method=sae", "schedule.steps=1",
        "method.n_sparse_variants=1", "selection=last_draw", "threads=1", "progress=false", "logger=none",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    correct = [item["correct"] for item in rows(run / "test_items.jsonl")]
    assert len(correct) == len(rows(OWN / "opposites.jsonl")) - 8
    assert results["test"]["own_mc"] == pytest.approx(sum(correct) / len(correct))
    saved = load_tokenizer(run / "model")
    assert saved.chat_template == tokenizer.chat_template
    samples = lm_eval_samples(load_model(run / "model"), saved, path, "own_mc", 2, chat=True)
    assert [s["acc"] == 1 for s in samples] == correct
