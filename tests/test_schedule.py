"""The cyclic sparsity schedule's exact rates."""

import math

import pytest

from sae_merging.schedules.cyclic import ConstantSchedule, CyclicSchedule


def _cosine(s_min, s_max, x):
    return s_min + (s_max - s_min) * (1 - math.cos(math.pi * x)) / 2


def test_paper_defaults():
    # cycles of 3, 6 and 12 steps; 12 generations cover 3 + 6 + the first 3 of the third cycle
    expected = [_cosine(0.1, 0.6, x) for x in (0, 0.5, 1)]
    expected += [_cosine(0.1, 0.6, i / 5) for i in range(6)]
    expected += [_cosine(0.1, 0.6, i / 11) for i in range(3)]
    assert CyclicSchedule().rates() == pytest.approx(expected, abs=1e-12)
    assert CyclicSchedule().rates()[:3] == pytest.approx([0.1, 0.35, 0.6])


def test_t0_one_and_no_grow():
    # T0=1, T_mult=2: cycles of 1, 2, 4, 8 steps; a one-step cycle sits at s_max
    rates = CyclicSchedule(T0=1, T_mult=2, steps=7).rates()
    assert rates == pytest.approx(
        [0.6, 0.1, 0.6, 0.1, _cosine(0.1, 0.6, 1 / 3), _cosine(0.1, 0.6, 2 / 3), 0.6]
    )
    # T_mult=1 ("no grow"): the same 3-step cycle repeats
    assert CyclicSchedule(s_min=0.05, s_max=0.9, T_mult=1, steps=7).rates() == pytest.approx(
        [0.05, 0.475, 0.9, 0.05, 0.475, 0.9, 0.05]
    )


def test_linear_rise_and_constant():
    assert CyclicSchedule(T0=5, steps=5, rise="linear").rates() == pytest.approx(
        [0.1, 0.225, 0.35, 0.475, 0.6]
    )
    assert ConstantSchedule(0.3, steps=4).rates() == [0.3] * 4
    with pytest.raises(ValueError):
        CyclicSchedule().rate(0)


def test_rates_go_on_past_steps():
    """A budget-stopped search may run longer than `steps`: the cycles continue."""
    schedule = CyclicSchedule(s_min=0.05, s_max=0.9, T_mult=1, steps=3)
    assert [schedule.rate(t) for t in (4, 5, 6)] == pytest.approx([0.05, 0.475, 0.9])
    # T0=3, T_mult=2: cycles 1-3, 4-9, 10-21; step 13 is the 4th of the 12-step third cycle
    assert CyclicSchedule().rate(13) == pytest.approx(0.1 + 0.5 * (1 - math.cos(math.pi * 3 / 11)) / 2)
