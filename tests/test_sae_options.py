"""SAE's options where the paper is ambiguous, each checked for what it computes on hand-made
archives: eq. 3's aggregate, the shared competition's scale."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sae_merging.methods.sae import SAE
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.runtime.context import Member, PopulationState
from sae_merging.runtime.fitness import Scores, aggregate
from sae_merging.runtime.store import IndividualStore
from sae_merging.schedules.cyclic import CyclicSchedule
from sae_merging.sparsity.measures import zero_count
from sae_merging.sparsity.scoring import SparsityScoring
from sae_merging.utils.settings import SettingError
from sae_merging.utils.tensorfiles import LazyTensors
from sae_merging.utils.timing import Timer


def _sae(**options) -> SAE:
    return SAE(CyclicSchedule(), MagnitudePruner("global"), SparsityScoring(zero_count), **options)


# three members on task a (4 items) and task b (2 items); sparsities 0.0, 0.5, 0.3
CORRECT = [
    {"a": [True, True, False, False], "b": [True, False]},
    {"a": [True, False, True, False], "b": [False, False]},
    {"a": [False, False, False, True], "b": [True, True]},
]
SPARSITY = [0.0, 0.5, 0.3]


def _archive():
    members = [Member(f"m{k}", "child", sparsity=s) for k, s in enumerate(SPARSITY)]
    scores = {m.ident: Scores(c) for m, c in zip(members, CORRECT, strict=True)}
    return members, scores


def test_aggregate_instances_weights_tasks_by_item_count():
    scores = Scores({"a": [True] * 5 + [False] * 5, "b": [True, True]})  # a: 0.5 of 10, b: 1.0 of 2
    assert scores.value("task_mean") == scores.mean == pytest.approx(0.75, abs=1e-12)
    assert scores.value("instances") == pytest.approx(7 / 12, abs=1e-12)
    assert aggregate({"a": 0.5, "b": 1.0}, {"a": 10, "b": 2}, "instances") == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="aggregate='sum'; valid: instances, task_mean"):
        aggregate({"a": 0.5}, {"a": 1}, "sum")


@pytest.mark.parametrize("how", ["task_mean", "instances"])
def test_worst_competition_fitness_is_p_plus_alpha_s(how):
    members, scores = _archive()
    p = {"task_mean": [(0.5 + 0.5) / 2, (0.5 + 0) / 2, (0.25 + 1.0) / 2], "instances": [3 / 6, 2 / 6, 3 / 6]}
    values = _sae(aggregate=how, sparsity_weight=0.1).competition_values(members, scores)
    assert values == pytest.approx([pk + 0.1 * s for pk, s in zip(p[how], SPARSITY)], abs=1e-12)


@pytest.mark.parametrize(
    ("how", "shared"),
    [
        # solvers per example: a [2, 1, 1, 1], b [2, 1]; member k's shares / item count, per task
        ("task_mean", [(1.5 / 4 + 0.5 / 2) / 2, (1.5 / 4 + 0) / 2, (1 / 4 + 1.5 / 2) / 2]),
        ("instances", [(1.5 + 0.5) / 6, 1.5 / 6, (1 + 1.5) / 6]),
    ],
)
def test_shared_competition_fitness_of_a_hand_made_archive(how, shared):
    members, scores = _archive()
    values = _sae(competition="shared", aggregate=how, sparsity_weight=0.1).competition_values(
        members, scores
    )
    assert values == pytest.approx([f + 0.1 * s for f, s in zip(shared, SPARSITY)], abs=1e-12)


def test_shared_fitness_equals_p_when_no_example_is_shared():
    members = [Member("x", "child"), Member("y", "child")]
    scores = {
        "x": Scores({"a": [True, False, False], "b": [True]}),
        "y": Scores({"a": [False, True, False], "b": [False]}),
    }
    for how in ("task_mean", "instances"):
        sae = _sae(competition="shared", sparsity_weight=0.0, aggregate=how)
        expected = [sae.task_score(scores["x"]), sae.task_score(scores["y"])]
        assert sae.competition_values(members, scores) == pytest.approx(expected)
        assert expected[0] == pytest.approx({"task_mean": (1 / 3 + 1) / 2, "instances": 2 / 4}[how])


def test_bad_option_values_are_refused():
    with pytest.raises(SettingError, match="^aggregate='sum': must be one of instances, task_mean$"):
        _sae(aggregate="sum")
    with pytest.raises(SettingError, match="^competition='best': must be one of worst, shared$"):
        _sae(competition="best")


# --- options that act on the child (`SAE.child`, the one child path) ---------------------------

SHAPES = {"model.layers.0.mlp.up_proj.weight": (6, 5), "model.layers.0.self_attn.q_proj.weight": (4, 5)}


def _parents():
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    a = {n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    b = {n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    b = MagnitudePruner("global").prune(b, 0.6)  # b stands in the archive 60% sparse, a dense
    return base, a, b


def _ctx(tmp_path, tensors: dict[str, dict]):
    store = IndividualStore(tmp_path)
    for ident, model in tensors.items():
        store.save(ident, model)
    return SimpleNamespace(store=store, timer=Timer(), device=torch.device("cpu"))


@pytest.mark.parametrize("omega_from", ["pruned", "archive"])
def test_omega_from_archive_moves_lambda_off_one_half(omega_from, tmp_path):
    _, a, b = _parents()
    members = [Member("a", "expert:x", sparsity=0.0), Member("b", "variant:y", sparsity=0.6)]
    sae = _sae(omega_from=omega_from, sparsity_weight=0.1)
    record = {}
    sae._make_child(_ctx(tmp_path, {"a": a, "b": b}), *members, 0.7, 0.7, 0.7, None, record=record)
    if omega_from == "pruned":  # both parents pruned to s_t = 0.7 first: equal S, lambda = 1/2
        assert record["omega"] == pytest.approx([0.07, 0.07])
        assert record["ratios"] == pytest.approx([0.5] * 2, abs=1e-12)
        return
    expected = (0.7 + 0.0) / ((0.7 + 0.0) + (0.7 + 0.1 * 0.6))  # eq. 5 with the archive's S
    assert record["omega"] == pytest.approx([0.0, 0.06])
    assert record["ratios"] == pytest.approx([expected] * 2, abs=1e-12)
    assert expected != pytest.approx(0.5, abs=1e-3)


def test_sparsity_scale_archive_normalizes_over_the_archive():
    sae = _sae(sparsity_scale="archive", sparsity_weight=0.1)
    members = [Member(f"m{k}", "child", sparsity=s) for k, s in enumerate([0.2, 0.4, 0.6])]
    span = sae.span(members)
    assert span == (0.2, 0.6)
    assert [sae.scaled(m.sparsity, span) for m in members] == pytest.approx([0.0, 0.5, 1.0])
    assert sae.scaled(0.9, span) == 1.0 and sae.scaled(0.1, span) == 0.0  # clipped
    assert sae.scaled(0.3, (0.3, 0.3)) == 0.0  # all equally sparse: no bonus
    scores = {m.ident: Scores({"t": [True, False]}) for m in members}
    assert sae.competition_values(members, scores) == pytest.approx([0.5, 0.55, 0.6])
    rule = sae.mixing_ratios(0.5, 0.5, ({"w": 0.2}, {"w": 0.6}), span)
    assert rule(None, None) == pytest.approx({"w": 0.5 / (0.5 + 0.5 + 0.1)})
    assert _sae().span(members) is None  # raw


@pytest.mark.parametrize(("elitism", "keep_experts", "loser"), [(0, False, 0), (0, True, 1), (1, False, 1)])
def test_elitism_and_kept_experts_are_never_replaced(elitism, keep_experts, loser):
    # alpha = 1: the dense expert has the best p (0.75) but the worst fitness p + S (0.75);
    # m1: 0.5 + 0.6, m2: 0.55 + 0.6 (p over 20 items); the child 0.6 + 0.6
    def scores_of(solved: int) -> Scores:
        return Scores({"t": [True] * solved + [False] * (20 - solved)})

    members = [
        Member("e", "expert:x"),
        Member("m1", "child", sparsity=0.6),
        Member("m2", "child", sparsity=0.6),
    ]
    scores = {"e": scores_of(15), "m1": scores_of(10), "m2": scores_of(11), "c": scores_of(12)}
    child = Member("c", "child", sparsity=0.6)
    state = PopulationState(1, list(members))
    sae = _sae(elitism=elitism, keep_experts=keep_experts, sparsity_weight=1.0, archive_size=3)
    assert sae.admit(state, child, scores) is members[loser] and state.members[loser] is child
    # a child weaker than every unprotected member leaves
    weak = Member("w", "child")
    scores["w"] = scores_of(0)
    assert sae.admit(state, weak, scores) is weak


def test_elitism_must_leave_room():
    models = SimpleNamespace(expert_names=["x", "y"], has_base=True)
    problems = _sae(elitism=5, keep_experts=True, archive_size=6).problems(models)
    assert problems == [
        "method.elitism=5 (keep_experts=True): keeps 7 of the archive's 6 places; "
        "at least one must stay open to children"
    ]
    assert _sae(elitism=3, keep_experts=True, archive_size=6).problems(models) == []
    with pytest.raises(SettingError, match="^elitism=-1: must be an integer >= 0$"):
        _sae(elitism=-1)
    with pytest.raises(SettingError, match="^omega_from='merged': must be one of pruned, archive$"):
        _sae(omega_from="merged")
    with pytest.raises(SettingError, match="^sparsity_scale='z': must be one of raw, archive$"):
        _sae(sparsity_scale="z")


@pytest.mark.parametrize("stream", [False, True])
def test_task_vector_pruning_in_the_child_path(stream):
    base, a, b = _parents()
    pruner = MagnitudePruner("global", target="task_vector").with_base(base)
    sae = SAE(CyclicSchedule(), pruner, SparsityScoring(zero_count), sparsity_weight=0.1)
    parents = [LazyTensors(list(p), p.__getitem__) if stream else p for p in (a, b)]
    child = sae.child(*parents, 0.7, 0.6, 0.5)
    # every tensor: the child's task vector is 50% pruned, pruned entries are the base's
    deltas = {n: child.tensors[n] - base[n] for n in base}
    assert sum(int((d == 0).sum()) for d in deltas.values()) == round(
        0.5 * sum(t.numel() for t in base.values())
    )
    # eq. 5 on the pruned parents' task-vector sparsity: both 0.5, so lambda = 0.7 / 1.3 + ... exactly
    expected = (0.7 + 0.05) / ((0.7 + 0.05) + (0.6 + 0.05))
    assert list(child.weights.values()) == pytest.approx([expected] * 2, abs=1e-12)
    in_memory = sae.child(a, b, 0.7, 0.6, 0.5)
    for name in base:
        assert torch.equal(child.tensors[name], in_memory.tensors[name])
    # the stored S of a task-vector-pruned model is its task vector's zero share
    assert sae.scoring.of_model(pruner.targets(child.tensors), pruner) == pytest.approx(0.5)
