"""The fitness evaluator: per-example results equal a direct evaluation, each individual is read
from the archive once however many tasks it is scored on, and cached examples are never rescored."""

from __future__ import annotations

from sae_merging.evaluation.builtin import BuiltinEvaluator
from sae_merging.models.io import load_config, load_model, load_state_dict, load_tokenizer
from sae_merging.runtime.fitness import FitnessEvaluator


def test_score_reads_once_and_caches(micro_lab):
    path = str(micro_lab.experts["math"])
    tokenizer = load_tokenizer(path)
    fitness = FitnessEvaluator(BuiltinEvaluator(batch_size=8), load_config(path), tokenizer)
    tensors = load_state_dict(path)
    reads = []

    def source():
        reads.append(1)
        return tensors

    tasks = {t.name: t for t in micro_lab.tasks()}
    sample = {name: (task, task.split("opt")[:6]) for name, task in tasks.items()}
    scores = fitness.score("math", source, sample)
    assert len(reads) == 1  # both tasks scored from one read of the individual

    model = load_model(path)
    for name, (task, examples) in sample.items():
        direct = BuiltinEvaluator(batch_size=8).evaluate(model, tokenizer, task, examples)
        assert scores.correct[name] == direct.correct
    assert fitness.counters.examples_scored == sum(len(e) for _, e in sample.values())

    again = fitness.score("math", source, sample)  # all cached: nothing read or scored
    assert again.correct == scores.correct and len(reads) == 1
    assert fitness.counters.examples_scored == sum(len(e) for _, e in sample.values())
    assert (fitness.counters.fitness_evaluations, fitness.counters.models_scored) == (2, 1)
