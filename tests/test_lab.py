"""The lab's build: deterministic weights, disjoint splits, sizes of the evaluation sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sae_merging.lab import math_problems
from sae_merging.lab.build import EXPERTS, LabSpec, build_lab, lab_tasks_from_spec


def _weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_same_spec_same_weights(micro_lab, micro_lab_config, tmp_path):
    """A second build of the micro lab (same spec, torch version and thread count) from scratch
    has bit-identical base and expert weights, and the same scores."""
    again = build_lab(LabSpec.from_dict(micro_lab_config), tmp_path / "cache", progress=False)
    assert again.root.name == micro_lab.root.name
    for name in ("base", *EXPERTS):
        assert _weights_hash(again.root / name) == _weights_hash(micro_lab.root / name), name
    assert again.report["test_accuracy"] == micro_lab.report["test_accuracy"]


def test_thread_count_is_part_of_the_spec(micro_lab_config):
    """Weights depend on the build's thread count, so it is in the cache key: a build made with
    another count is never mistaken for this one."""
    spec = LabSpec.from_dict(micro_lab_config)
    other = LabSpec.from_dict({**micro_lab_config, "threads": spec.threads + 1})
    assert spec.key() != other.key()


def test_default_lab_evaluation_sets():
    """>= 2,000 test items per task, lab-multilingual >= 400 distinct questions in 5 languages;
    math test and optimization problems are distinct calculations; no test calculation or
    question is in the optimization pool or in training."""
    spec = LabSpec()
    tasks = lab_tasks_from_spec(spec)
    math, multilingual = tasks["lab-math"], tasks["lab-multilingual"]
    assert len(math["test"]) >= 2000 and len(multilingual["test"]) >= 2000
    assert len({e.uid.rsplit("/", 1)[0] for e in multilingual["test"]}) >= 400
    assert {e.group for e in multilingual["test"]} == set(spec.multilingual.languages)

    def calculation(example) -> str:  # the worked answer is the calculation itself
        return example.target

    for split in ("test", "opt"):
        assert len({calculation(e) for e in math[split]}) == len(math[split]), split
    assert not {calculation(e) for e in math["test"]} & {calculation(e) for e in math["opt"] + math["train"]}
    prompts = {split: {e.prompt for e in multilingual[split]} for split in ("train", "opt", "test")}
    assert not prompts["test"] & (prompts["opt"] | prompts["train"])


def test_too_many_distinct_problems_is_a_clear_error():
    spec = math_problems.MathSpec(max_operand=2, steps=(1,))
    with pytest.raises(ValueError, match="distinct problems"):
        math_problems.generate(spec, "test", 50, 0, distinct=True)
