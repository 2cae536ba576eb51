"""Baseline merge functions, the PSO move and M2N2's fitness sharing against hand computations."""

import math
import random

import pytest
import torch

from sae_merging.merging import functions as F
from sae_merging.methods.m2n2 import crossover, interpolate
from sae_merging.methods.pso import pso_update
from sae_merging.methods.sharing import attraction, shared_matrix, weakest, weighted_index

BASE = torch.ones(6)
# task vectors chosen so each expert's top 3 by magnitude is unambiguous
D1 = torch.tensor([3.0, -1.0, 2.0, 0.5, -4.0, 1.0])
D2 = torch.tensor([-2.0, -3.0, 1.0, 1.0, 2.0, -0.5])
D3 = torch.tensor([1.5, 2.0, -5.0, 0.2, 1.0, 0.1])
EXPERTS = [BASE + D1, BASE + D2, BASE + D3]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a, b)


def test_task_arithmetic_formula():
    expected = BASE + 0.4 * (1.0 * D1 + 0.5 * D2 + 2.0 * D3)
    _close(F.task_arithmetic(BASE, EXPERTS, 0.4, [1.0, 0.5, 2.0]), expected)
    _close(F.task_arithmetic(BASE, EXPERTS, 0.4), BASE + 0.4 * (D1 + D2 + D3))


def test_linear_is_the_weighted_average():
    _close(F.weighted_average(EXPERTS[:2]), (EXPERTS[0] + EXPERTS[1]) / 2)
    _close(F.weighted_average(EXPERTS, [1.0, 2.0, 1.0]), (EXPERTS[0] + 2 * EXPERTS[1] + EXPERTS[2]) / 4)


def test_magnitude_mask_keeps_int_density_n_largest():
    mask = F.magnitude_mask(D1, 0.5)  # k = 3: |-4|, |3|, |2|
    assert mask.tolist() == [True, False, True, False, True, False]
    assert F.magnitude_mask(D1, 1.0).all() and not F.magnitude_mask(D1, 0.1).any()


def test_ties_by_hand():
    # kept (top 3): d1 = [3, 0, 2, 0, -4, 0], d2 = [-2, -3, 0, 0, 2, 0], d3 = [1.5, 2, -5, 0, 0, 0]
    # sums [2.5, -1, -3, 0, -2, 0] elect [+, -, -, +, -, +]; disjoint means of agreeing entries:
    # [(3 + 1.5) / 2, -3, -5, none -> 0, -4, none -> 0]
    expected = BASE + 0.5 * torch.tensor([2.25, -3.0, -5.0, 0.0, -4.0, 0.0])
    _close(F.ties(BASE, EXPERTS, density=0.5, scale=0.5), expected)


def test_ties_weights_enter_the_sign_election_and_the_mean():
    # weighted kept deltas: [3, 0, 2, 0, -4, 0], [-4, -6, 0, 0, 4, 0], [1.5, 2, -5, 0, 0, 0]
    # sums [0.5, -4, -3, 0, 0, 0] elect [+, -, -, +, +, +]; means divide by the agreeing weights:
    # [(3 + 1.5) / (1 + 1), -6 / 2, -5 / 1, 0, 4 / 2, 0]
    expected = BASE + torch.tensor([2.25, -3.0, -5.0, 0.0, 2.0, 0.0])
    _close(F.ties(BASE, EXPERTS, density=0.5, scale=1.0, weights=[1.0, 2.0, 1.0]), expected)


def test_ties_with_density_one_and_no_sign_conflict_is_task_arithmetic():
    base = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    deltas = [torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[2.0, -0.5], [1.5, 1.0]])]
    experts = [base + d for d in deltas]
    weights = [1.0, 3.0]
    # mergekit's TIES divides by the agreeing weights: task arithmetic with weights summing to 1
    _close(
        F.ties(base, experts, 1.0, 0.7, weights),
        F.task_arithmetic(base, experts, 0.7, [w / sum(weights) for w in weights]),
    )
    _close(
        F.ties(base, experts, 1.0, 0.7, weights, normalize=False),
        F.task_arithmetic(base, experts, 0.7, weights),
    )


def test_dare_formula_with_a_seeded_generator():
    weights, density, scale = [1.0, 0.5, 2.0], 0.3, 0.8
    replay = torch.Generator().manual_seed(11)
    masks = [torch.rand(BASE.shape, generator=replay) < density for _ in EXPERTS]
    expected = BASE + scale * sum(
        w * m * d / density for w, m, d in zip(weights, masks, [D1, D2, D3], strict=True)
    )
    merged = F.dare(BASE, EXPERTS, density, scale, torch.Generator().manual_seed(11), weights)
    _close(merged, expected)
    unscaled = F.dare(BASE, EXPERTS, density, 1.0, torch.Generator().manual_seed(11), rescale=False)
    _close(unscaled, BASE + sum(m * d for m, d in zip(masks, [D1, D2, D3], strict=True)))


def test_dare_is_reproducible_and_preserves_the_expected_value():
    base = torch.zeros(200_000)
    expert = base + 0.5
    first = F.dare(base, [expert], 0.2, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(first, F.dare(base, [expert], 0.2, 1.0, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, F.dare(base, [expert], 0.2, 1.0, torch.Generator().manual_seed(4)))
    kept = first != 0
    assert torch.allclose(first[kept], torch.tensor(0.5 / 0.2))  # kept entries rescaled by 1/density
    assert float(kept.float().mean()) == pytest.approx(0.2, abs=0.005)
    assert float(first.mean()) == pytest.approx(0.5, rel=0.02)  # E[DARE(delta)] = delta
    _close(F.dare(BASE, EXPERTS, 1.0, 0.4, torch.Generator()), F.task_arithmetic(BASE, EXPERTS, 0.4))


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    _close(F.slerp(a, b, 0.0), a)
    _close(F.slerp(a, b, 1.0), b)
    # 90 degrees: sin(w/2)/sin(w) = 1/sqrt(2) on each
    _close(F.slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    t, omega = 0.3, math.pi / 2
    expected = math.sin((1 - t) * omega) * a + math.sin(t * omega) * b
    _close(F.slerp(a.reshape(1, 2), b.reshape(1, 2), t), expected.reshape(1, 2))


def test_slerp_falls_back_to_lerp_for_parallel_and_zero_tensors():
    a = torch.tensor([1.0, 2.0, 3.0])
    _close(F.slerp(a, 2 * a, 0.25), 0.75 * a + 0.25 * 2 * a)
    _close(F.slerp(torch.zeros(3), a, 0.5), 0.5 * a)
    out = F.slerp(a.to(torch.bfloat16), torch.tensor([3.0, 2.0, 1.0], dtype=torch.bfloat16), 0.5)
    assert out.dtype == torch.bfloat16


def test_new_merges_keep_the_input_dtype():
    base, experts = BASE.to(torch.bfloat16), [e.to(torch.bfloat16) for e in EXPERTS]
    assert F.ties(base, experts, 0.5, 1.0).dtype == torch.bfloat16
    assert F.dare(base, experts, 0.5, 1.0, torch.Generator().manual_seed(0)).dtype == torch.bfloat16


def test_pso_update_by_hand():
    x, v = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    personal, best = torch.tensor([2.0, 2.0]), torch.tensor([0.0, 4.0])
    # v' = 0.2 v + 2 * 0.25 (pbest - x) + 2 * 0.5 (gbest - x) = [0.1, -0.2] + [0.5, 0] + [-1, 2]
    new_x, new_v = pso_update(x, v, personal, best, 0.2, 2.0, 2.0, 0.25, 0.5)
    _close(new_v, torch.tensor([-0.4, 1.8]))
    _close(new_x, torch.tensor([0.6, 3.8]))
    # per-element r1 = [0.25, 1], r2 = [0.5, 0]
    new_x, new_v = pso_update(
        x, v, personal, best, 0.2, 2.0, 2.0, torch.tensor([0.25, 1.0]), torch.tensor([0.5, 0.0])
    )
    _close(new_v, torch.tensor([-0.4, -0.2]))
    _close(new_x, torch.tensor([0.6, 1.8]))
    # clamp |v| <= 0.3
    new_x, new_v = pso_update(x, v, personal, best, 0.2, 2.0, 2.0, 0.25, 0.5, limit=0.3)
    _close(new_v, torch.tensor([-0.3, 0.3]))
    _close(new_x, torch.tensor([0.7, 2.3]))
    half = pso_update(x.to(torch.bfloat16), v.to(torch.bfloat16), personal, best, 0.2, 2.0, 2.0, 0.25, 0.5)
    assert all(t.dtype == torch.bfloat16 for t in half)


CORRECT = [
    [True, True, False, False],
    [True, False, True, False],
    [True, False, False, False],
]


def _shared_fitness(correct, alpha=1.0) -> list[float]:
    """f_k = sum_j s_kj / (sum_k' s_k'j)^alpha: each member's shares summed."""
    return [sum(row) for row in shared_matrix(correct, alpha)]


def test_shared_fitness_by_hand_on_a_3x4_matrix():
    # solvers per example: [3, 1, 1, 0]; the last example, solved by nobody, gives no credit
    assert _shared_fitness(CORRECT, alpha=1.0) == pytest.approx([1 / 3 + 1, 1 / 3 + 1, 1 / 3], abs=1e-12)
    assert _shared_fitness(CORRECT, alpha=2.0) == pytest.approx([1 / 9 + 1, 1 / 9 + 1, 1 / 9], abs=1e-12)
    assert _shared_fitness(CORRECT, alpha=0.0) == [2.0, 2.0, 1.0]
    assert _shared_fitness([[False, False], [False, False]]) == [0.0, 0.0]


def test_attraction_by_hand():
    shares = shared_matrix(CORRECT, alpha=1.0)  # rows [1/3, 1, 0, 0], [1/3, 0, 1, 0], [1/3, 0, 0, 0]
    assert attraction(shares, 2) == pytest.approx([1.0, 1.0, 0.0])
    assert attraction(shares, 0) == pytest.approx([0.0, 1.0, 0.0])


def test_parent_draws_guard_all_zero_weights():
    rng = random.Random(0)
    assert {weighted_index(rng, [0.0, 0.0, 0.0], exclude=1) for _ in range(50)} == {0, 2}
    assert {weighted_index(rng, [0.0, 2.0, 0.0]) for _ in range(20)} == {1}
    assert weakest([0.5, 0.2, 0.2]) == 2  # on a tie the newcomer (last) leaves
    assert weakest([0.5, 0.1, 0.2]) == 1


def test_crossover_split_and_ratio():
    parents = [{f"t{i}": torch.full((2,), float(i + 10 * p)) for i in range(4)} for p in (0, 1)]
    child = crossover(*parents, 2, 0.25, "lerp", "tensor")  # share of b: r before the split, 1 - r after
    for i, t in enumerate([0.25, 0.25, 0.75, 0.75]):
        _close(child[f"t{i}"], (1 - t) * parents[0][f"t{i}"] + t * parents[1][f"t{i}"])
    a, b = torch.tensor([1.0, 3.0]), torch.tensor([5.0, -1.0])
    _close(interpolate(a, b, 0.25), 0.75 * a + 0.25 * b)
    _close(interpolate(a, b, 0.25, "slerp"), F.slerp(a, b, 0.25))


def _flat_slerp_by_hand(x: list[float], y: list[float], split: int, w: float) -> list[float]:
    """natural_niches' slerp_w_splitpoint, written out entry by entry with math."""
    dot = sum(p * q for p, q in zip(x, y))
    omega = math.acos(dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y))))
    out = []
    for j, (p, q) in enumerate(zip(x, y)):
        val = w if j < split else 1 - w
        out.append(
            math.sin((1 - val) * omega) / math.sin(omega) * p + math.sin(val * omega) / math.sin(omega) * q
        )
    return out


@pytest.mark.parametrize("split", [0, 2, 3, 5, 7])
def test_flat_slerp_with_entry_split_equals_the_reference_by_hand(split):
    a = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), "v": torch.tensor([2.0, 1.0, -1.0])}
    b = {"w": torch.tensor([[0.0, 1.0], [2.0, -1.0]]), "v": torch.tensor([1.0, 4.0, 0.5])}
    x = a["w"].reshape(-1).tolist() + a["v"].tolist()
    y = b["w"].reshape(-1).tolist() + b["v"].tolist()
    expected = torch.tensor(_flat_slerp_by_hand(x, y, split, 0.3))
    child = crossover(a, b, split, 0.3, "slerp_flat", "entry")
    _close(torch.cat([child["w"].reshape(-1), child["v"]]), expected)
    # the angle is the whole vector's: per-tensor slerp differs
    per_tensor = crossover(a, b, split, 0.3, "slerp", "entry")
    assert not torch.allclose(torch.cat([per_tensor["w"].reshape(-1), per_tensor["v"]]), expected, atol=1e-4)


def test_flat_slerp_of_parallel_models_is_lerp():
    a = {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([3.0])}
    b = {name: 2 * t for name, t in a.items()}
    child = crossover(a, b, 1, 0.4, "slerp_flat", "entry")
    _close(child["w"], torch.tensor([0.6 * 1 + 0.4 * 2, 0.4 * 2 + 0.6 * 4]))
    _close(child["v"], torch.tensor([0.4 * 3 + 0.6 * 6]))
