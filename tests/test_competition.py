"""SAE's fitness, competition and generation 0, and M2N2's competition, on hand-made archives
whose outcome is worked out by hand in each test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sae_merging.methods.m2n2 import M2N2
from sae_merging.methods.sae import SAE
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.runtime.context import Member, PopulationState
from sae_merging.runtime.fitness import Scores
from sae_merging.runtime.loop import run_generation
from sae_merging.sparsity.measures import zero_count
from sae_merging.sparsity.scoring import SparsityScoring
from sae_merging.utils.timing import Timer


class Ctx(SimpleNamespace):
    """The parts of RunContext generation 0 uses."""

    def __init__(self, **kwargs) -> None:
        super().__init__(timer=Timer(), device=torch.device("cpu"), **kwargs)


def _sae(**kwargs) -> SAE:
    schedule = SimpleNamespace(range=(0.1, 0.6), steps=2)
    return SAE(schedule, MagnitudePruner("local"), SparsityScoring(zero_count), **kwargs)


def _archive(correct: dict[str, list[int]], sparsity: dict[str, float] | None = None):
    """Members named by `correct`'s keys (one task 't'), and their scores."""
    sparsity = sparsity or {}
    members = [Member(ident=i, origin="test", sparsity=sparsity.get(i, 0.0)) for i in correct]
    scores = {i: Scores({"t": [bool(c) for c in row]}) for i, row in correct.items()}
    return members, scores


def test_sae_fitness_is_task_score_plus_alpha_sparsity():
    sae = _sae(sparsity_weight=0.1, aggregate="task_mean")
    scores = Scores({"a": [True, False, True, True], "b": [True, False]})  # 0.75 and 0.5
    assert sae.fitness(scores, Member("m", "test", sparsity=0.4)) == pytest.approx(0.625 + 0.04)
    assert (
        _sae(sparsity_weight=0.0, aggregate="task_mean").fitness(scores, Member("m", "test", sparsity=0.9))
        == 0.625
    )
    # the default, eq. 3 over instances: 4 of the 6 items solved
    assert _sae(sparsity_weight=0.1).fitness(scores, Member("m", "test", sparsity=0.4)) == pytest.approx(
        4 / 6 + 0.04
    )


def test_sae_child_joins_while_the_archive_has_room():
    sae = _sae(archive_size=3)
    members, scores = _archive({"a": [1, 0], "b": [0, 0], "c": [0, 0]})
    state = PopulationState(1, members[:2])
    left = sae.admit(state, members[2], scores)
    assert [m.ident for m in state.members] == ["a", "b", "c"] and left is None


def test_sae_worst_competition_replaces_the_least_fit_in_its_place():
    """Fitness p + 0.1 S: a 0.5, b 0.25 + 0.1 * 0.2 = 0.27, c 0.75; child 0.5 + 0.1 * 0.3 =
    0.53 > 0.27: b's slot goes to the child."""
    sae = _sae(archive_size=3, sparsity_weight=0.1)
    correct = {"a": [1, 1, 0, 0], "b": [1, 0, 0, 0], "c": [1, 1, 1, 0], "child": [0, 0, 1, 1]}
    members, scores = _archive(correct, {"b": 0.2, "child": 0.3})
    state = PopulationState(1, members[:3])
    left = sae.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["a", "child", "c"]
    assert left.ident == "b"


def test_sae_worst_competition_keeps_the_incumbent_on_a_tie():
    """The child's fitness equals the weakest member's (0.25 + 0.1 * 0.2 = 0.27): it leaves."""
    sae = _sae(archive_size=3, sparsity_weight=0.1)
    correct = {"a": [1, 1, 0, 0], "b": [1, 0, 0, 0], "c": [1, 1, 1, 0], "child": [0, 0, 0, 1]}
    members, scores = _archive(correct, {"b": 0.2, "child": 0.2})
    state = PopulationState(1, members[:3])
    left = sae.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["a", "b", "c"]
    assert left.ident == "child"


# a and b solve the same examples; c solves example 2 alone; the child solves example 3 alone.
# Shared fitness (alpha = 1): example 0 has 3 solvers, 1 has 2, 2 and 3 one each:
# a = b = 1/3 + 1/2 = 0.833, c = 1/3 + 1 = 1.333, child = 1. Accuracy: a = b = c = 0.5, child 0.25.
SHARING = {"a": [1, 1, 0, 0], "b": [1, 1, 0, 0], "c": [1, 0, 1, 0], "child": [0, 0, 0, 1]}


def test_sae_shared_competition_keeps_the_child_that_solves_what_nobody_else_does():
    sae = _sae(archive_size=3, competition="shared", sparsity_weight=0.1)
    members, scores = _archive(SHARING)
    state = PopulationState(1, members[:3])
    left = sae.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["child", "b", "c"]  # a, b tie at 0.833: a (first) goes
    assert left.ident == "a"
    # the same archive under `worst`: the child is the least accurate and leaves
    members, scores = _archive(SHARING)
    state = PopulationState(1, members[:3])
    left = _sae(archive_size=3, competition="worst").admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["a", "b", "c"] and left.ident == "child"


def test_sae_shared_competition_adds_alpha_sparsity():
    """b's sparsity 0.5 adds 0.1 * 0.5 = 0.05 to its shared 0.833: a alone is the weakest."""
    sae = _sae(archive_size=3, competition="shared", sparsity_weight=0.1)
    members, scores = _archive(SHARING, {"b": 0.5})
    state = PopulationState(1, members[:3])
    left = sae.admit(state, members[3], scores)
    assert left.ident == "a"
    members, scores = _archive(SHARING, {"a": 0.5})
    state = PopulationState(1, members[:3])
    left = sae.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["a", "child", "c"] and left.ident == "b"


def test_sae_generation_0_holds_the_experts_and_their_pruned_variants(tmp_path):
    """Two experts, two variants each at rates evenly spaced over the schedule's range (0.1 and
    0.6): six members in order, each variant pruned to exactly its rate (zero-count sparsity)."""
    from sae_merging.runtime.store import IndividualStore
    from sae_merging.utils.tensorfiles import LazyTensors

    g = torch.Generator().manual_seed(0)
    experts = [{"w.weight": torch.randn(10, 10, generator=g) + 3.0} for _ in range(2)]  # no zeros
    saved = {}
    store = IndividualStore(tmp_path)
    ctx = Ctx(
        models=SimpleNamespace(expert_names=["math", "lang"]),
        expert_tensors=lambda i: LazyTensors(list(experts[i]), experts[i].__getitem__),
        store=store,
        sample=lambda draw: {},
        score=lambda member, sample: Scores({"t": [True]}),
    )
    sae = _sae(archive_size=6, n_sparse_variants=2)
    state, spent = run_generation(sae, ctx, sae.init(ctx), 0)
    assert not spent
    assert [(m.ident, m.origin, m.rate) for m in state.members] == [
        ("g000-0000", "expert:math", 0.0),
        ("g000-0001", "variant:math", 0.1),
        ("g000-0002", "variant:math", 0.6),
        ("g000-0003", "expert:lang", 0.0),
        ("g000-0004", "variant:lang", 0.1),
        ("g000-0005", "variant:lang", 0.6),
    ]
    assert [m.sparsity for m in state.members] == pytest.approx([0.0, 0.1, 0.6, 0.0, 0.1, 0.6])
    assert state.next_id == 6 and state.generation == 0
    for member in state.members:
        saved[member.ident] = store.load(member.ident)["w.weight"]
    expert = experts[1]["w.weight"]
    kept = saved["g000-0005"] != 0  # the 40 largest magnitudes of the expert survive, unchanged
    assert int(kept.sum()) == 40 and torch.equal(saved["g000-0005"][kept], expert[kept])
    assert expert.abs()[kept].min() >= expert.abs()[~kept].max()
    assert torch.equal(saved["g000-0003"], expert)
    assert state.metrics["archive/size"] == 6 and state.metrics["archive/sparsity_max"] == pytest.approx(0.6)


def test_m2n2_competition_by_shared_fitness():
    """The same archive: M2N2 keeps the child (shared fitness 1 > a's 0.833). A child that
    solves only what a and b solve ties with them at 1/4 + 1/3 = 0.583 and leaves (a newcomer
    loses ties)."""
    m2n2 = M2N2(archive_size=3, alpha=1.0)
    members, scores = _archive(SHARING)
    state = PopulationState(1, members[:3])
    left = m2n2.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["child", "b", "c"] and left.ident == "a"
    members, scores = _archive({**SHARING, "child": [1, 1, 0, 0]})
    state = PopulationState(1, members[:3])
    left = m2n2.admit(state, members[3], scores)
    assert [m.ident for m in state.members] == ["a", "b", "c"] and left.ident == "child"


def test_m2n2_child_joins_while_the_archive_has_room():
    m2n2 = M2N2(archive_size=4)
    members, scores = _archive(SHARING)
    state = PopulationState(1, members[:3])
    left = m2n2.admit(state, members[3], scores)
    assert len(state.members) == 4 and left is None
