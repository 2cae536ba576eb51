"""Task loaders (GSM8K, MMLU-ProX) from local fixtures, the paper's task configs, and
stratified sampling."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import lm_eval
import pytest
import yaml
from conftest import FIXTURES, compose_config
from hydra.utils import instantiate

from sae_merging.tasks.base import Example, TaskData, read_jsonl
from sae_merging.tasks.gsm8k import STOP, load_gsm8k, render_prompt
from sae_merging.tasks.mmlu_prox import LANGUAGES, LETTERS, load_mmlu_prox, to_example
from sae_merging.tasks.pool import TaskPool

GSM8K = FIXTURES / "gsm8k"
MMLU_PROX_TEST = FIXTURES / "mmlu_prox_lite_en"
MMLU_PRO_VALIDATION = FIXTURES / "mmlu_pro_validation"


def test_gsm8k_fields_and_answers():
    task = load_gsm8k(str(GSM8K))
    rows = read_jsonl(GSM8K / "test.jsonl")
    assert (task.name, task.kind, task.stop, task.max_new_tokens) == ("gsm8k", "generate", STOP, 256)
    assert [len(task.split(s)) for s in ("train", "opt", "test")] == [0, 20, 30]
    example = task.split("test")[17]
    assert example.uid == "gsm8k/test/17"
    assert example.prompt == f"Question: {rows[17]['question']}\nAnswer:"
    assert example.target == " " + rows[17]["answer"]
    answers = {e.answer for e in task.split("test")}
    assert {"18", "2125", "114200", "-10"} <= answers  # thousands separators dropped, sign kept
    assert all(e.answer == e.target.rsplit("#### ", 1)[1].replace(",", "") for e in task.split("test"))


def lm_eval_gsm8k_contexts(tmp_path: Path, test_split: str, num_fewshot: int) -> list[str]:
    """Contexts lm-eval's own gsm8k task builds over the fixture files (its default seed)."""
    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    config.pop("tag")
    files = {split: str(GSM8K / f"{split}.jsonl") for split in ("train", "test")}
    config.update(
        task="gsm8k_fixture",
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": files, "cache_dir": str(tmp_path / "cache")},
        test_split=test_split,
        num_fewshot=num_fewshot,
    )
    (tmp_path / "gsm8k_fixture.yaml").write_text(yaml.safe_dump(config))
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load("gsm8k_fixture")["tasks"]
    task = task["gsm8k_fixture"]
    task.set_fewshot_seed(1234)
    task.build_all_requests(rank=0, world_size=1)
    return [instance.args[0] for instance in sorted(task.instances, key=lambda i: i.doc_id)]


@pytest.mark.parametrize("split, lm_eval_split", [("test", "test"), ("opt", "train")])
def test_gsm8k_fewshot_prompts_are_lm_evals(tmp_path, split, lm_eval_split):
    """Same shots, same order, same layout as lm-eval's gsm8k with --num_fewshot 3; on the
    train split (our opt split) lm-eval leaves the question itself out, as we do."""
    ours = [e.prompt for e in load_gsm8k(str(GSM8K), num_fewshot=3).split(split)]
    assert ours == lm_eval_gsm8k_contexts(tmp_path, lm_eval_split, 3)


def test_gsm8k_fewshot_layout_seed_and_no_self_shots():
    train = read_jsonl(GSM8K / "train.jsonl")
    assert render_prompt("Q?", train[:2]) == (
        f"Question: {train[0]['question']}\nAnswer: {train[0]['answer']}\n\n"
        f"Question: {train[1]['question']}\nAnswer: {train[1]['answer']}\n\nQuestion: Q?\nAnswer:"
    )
    task = load_gsm8k(str(GSM8K), num_fewshot=4)
    for example, row in zip(task.split("opt"), train):
        shots, target = example.prompt.rsplit("\n\n", 1)
        assert target == f"Question: {row['question']}\nAnswer:"
        assert row["question"] not in shots and shots.count("Question: ") == 4
    assert [e.prompt for e in load_gsm8k(str(GSM8K), num_fewshot=4).split("test")] == [
        e.prompt for e in task.split("test")
    ]
    reseeded = load_gsm8k(str(GSM8K), num_fewshot=4, fewshot_seed=7).split("test")
    assert [e.prompt for e in reseeded] != [e.prompt for e in task.split("test")]


def test_gsm8k_sources(tmp_path):
    single = tmp_path / "train.jsonl"
    shutil.copy(GSM8K / "train.jsonl", single)
    task = load_gsm8k(str(single), test_source=str(GSM8K / "test.jsonl"))
    assert (len(task.split("opt")), len(task.split("test"))) == (20, 30)
    with pytest.raises(ValueError, match="must not share a file"):
        load_gsm8k(str(single))  # one file cannot be both train and test
    with pytest.raises(FileNotFoundError, match="no train data"):
        load_gsm8k(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="'openai/gsm8k'.*local path"):
        load_gsm8k("openai/gsm8k")  # offline: the hub is out of reach


def test_mmlu_prox_letters_labels_and_groups():
    task = load_mmlu_prox(str(MMLU_PROX_TEST), str(MMLU_PRO_VALIDATION))
    assert (task.name, task.kind) == ("mmlu_prox", "multiple_choice")
    assert [len(task.split(s)) for s in ("train", "opt", "test")] == [0, 20, 20]
    for example, row in zip(task.split("test"), read_jsonl(MMLU_PROX_TEST / "test.jsonl")):
        options = [row[f"option_{i}"] for i in range(10) if row[f"option_{i}"] is not None]
        assert example.choices == tuple(f" {letter}" for letter in LETTERS[: len(options)])
        assert example.label == row["answer_index"] and example.target == f" {row['answer']}"
        assert example.group == "en" and example.uid.startswith("mmlu_prox/test/en/")
        assert example.prompt.startswith("The following is a multiple choice question.")
        assert f"\nQuestion: {row['question']}\nOptions:\n" in example.prompt
        assert example.prompt.endswith(f"\n{LETTERS[len(options) - 1]}. {options[-1]}\nAnswer:")
    assert {len(e.choices) for e in task.split("test")} > {10}  # some questions have fewer options
    for example, row in zip(task.split("opt"), read_jsonl(MMLU_PRO_VALIDATION / "validation.jsonl")):
        assert len(example.choices) == sum(option != "N/A" for option in row["options"])
        assert "N/A" not in example.prompt and example.label == row["answer_index"]


def test_mmlu_prox_relettering_and_bad_rows():
    example = to_example({"question": "q", "options": ["x", "N/A", "y"], "answer_index": 2}, "u", "fr")
    assert (example.choices, example.label, example.group) == ((" A", " B"), 1, "fr")
    assert example.prompt.endswith("A. x\nB. y\nAnswer:")
    with pytest.raises(ValueError, match="N/A"):
        to_example({"question": "q", "options": ["x", "N/A"], "answer_index": 1}, "u", "fr")


def test_mmlu_prox_languages_from_local_folders(tmp_path):
    for language in ("en", "fr"):
        shutil.copytree(MMLU_PROX_TEST, tmp_path / language)
        shutil.copy(MMLU_PRO_VALIDATION / "validation.jsonl", tmp_path / language)
    task = load_mmlu_prox(str(tmp_path / "{lang}"), languages=["en", "fr"])
    assert Counter(e.group for e in task.split("test")) == {"en": 20, "fr": 20}
    assert len({e.uid for e in task.split("test") + task.split("opt")}) == 80
    with pytest.raises(ValueError, match="holds one language"):
        load_mmlu_prox(str(tmp_path / "en"), languages=["en", "fr"])
    with pytest.raises(FileNotFoundError, match="'li-lab/MMLU-ProX'.*local path"):
        load_mmlu_prox("li-lab/MMLU-ProX")


def test_stratified_sampling_keeps_language_shares():
    sizes = {"en": 600, "fr": 300, "sw": 100}
    examples = [Example(f"t/test/{lang}/{i}", "p", group=lang) for lang, n in sizes.items() for i in range(n)]
    task = TaskData("t", "multiple_choice", {"opt": examples, "test": examples})
    pool = TaskPool([task], opt_size={"t": 50}, test_size={"t": 100}, stratify=["t"])
    test = pool.test_set(task, seed=0)
    assert Counter(e.group for e in test) == {"en": 60, "fr": 30, "sw": 10}
    assert [e.uid for e in test] == sorted((e.uid for e in test), key=[x.uid for x in examples].index)
    assert Counter(e.group for e in pool.opt_sample(task, seed=0, draw=3)) == {"en": 30, "fr": 15, "sw": 5}
    uneven = TaskData("t", "multiple_choice", {"test": examples[:7] + examples[600:605] + examples[900:903]})
    counts = Counter(
        e.group for e in TaskPool([uneven], test_size={"t": 5}, stratify=["t"]).test_set(uneven, 1)
    )
    assert counts == {"en": 2, "fr": 2, "sw": 1}  # quotas 2.33 / 1.67 / 1.0, largest remainders


def test_paper_config_lists_lm_evals_languages():
    cfg = compose_config(["task=paper"])
    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu_prox"
    languages = sorted(p.name for p in folder.iterdir() if (p / f"_mmlu_prox_{p.name}.yaml").is_file())
    assert list(cfg.task.tasks[1].languages) == list(LANGUAGES) == languages
    assert dict(cfg.task.opt_size) == {"gsm8k": 1319, "mmlu_prox": 200}
    assert dict(cfg.task.test_size) == {"gsm8k": None, "mmlu_prox": 1000}


def test_paper_local_config_instantiates_from_local_files(monkeypatch):
    monkeypatch.setenv("SAE_MERGING_DATA", str(FIXTURES))
    pool = instantiate(compose_config(["task=paper_local"]).task)
    assert isinstance(pool, TaskPool) and pool.problems() == []
    assert all(isinstance(task, TaskData) for task in pool.tasks)  # not wrapped in config nodes
    assert [(t.name, len(t.split("opt")), len(t.split("test"))) for t in pool.tasks] == [
        ("gsm8k", 20, 30),
        ("mmlu_prox", 20, 20),
    ]
    assert pool.stratify == {"mmlu_prox"} and len(pool.test_set(pool.task("mmlu_prox"), 0)) == 20
    json.dumps([e.to_json() for e in pool.opt_sample(pool.task("gsm8k"), 0, 0)])
