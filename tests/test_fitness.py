"""The fitness evaluator: per-example results equal a direct evaluation, each individual is read
from the archive once however many tasks it is scored on, and cached examples are never rescored."""

from __future__ import annotations

import pytest

from sae_merging.evaluation.builtin import BuiltinEvaluator
from sae_merging.models.io import load_config, load_model, load_state_dict, load_tokenizer
from sae_merging.runtime.fitness import BudgetSpent, FitnessEvaluator


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


def test_limit_scores_what_fits_then_stops(micro_lab):
    """A request that would pass the limit scores the examples that fit (the counter ends at the
    limit exactly, those scores cached) and raises BudgetSpent; with nothing left it raises
    before any work; a fully cached request passes."""
    path = str(micro_lab.base)
    fitness = FitnessEvaluator(BuiltinEvaluator(batch_size=8), load_config(path), load_tokenizer(path))
    tensors = load_state_dict(path)
    task = micro_lab.tasks()[1]
    examples = task.split("opt")[:10]
    fitness.score("base", lambda: tensors, {task.name: (task, examples[:4])})
    fitness.limit = 7
    with pytest.raises(BudgetSpent):
        fitness.score("base", lambda: tensors, {task.name: (task, examples)})
    assert fitness.counters.examples_scored == 7
    assert sorted(fitness.cache["base"]) == sorted(e.uid for e in examples[:7])
    with pytest.raises(BudgetSpent):
        fitness.score("other", lambda: tensors, {task.name: (task, examples[:1])})
    assert fitness.counters.examples_scored == 7 and not fitness.cache.get("other")
    scores = fitness.score("base", lambda: tensors, {task.name: (task, examples[:7])})
    assert len(scores.correct[task.name]) == 7
