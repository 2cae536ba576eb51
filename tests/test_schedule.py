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


def test_sgdr_phase_starts_every_cycle_at_s_min():
    # T0=1, T_mult=2: cycles of 1, 2, 4 steps at T_cur / T_i = 0; 0, 1/2; 0, 1/4, 2/4, 3/4
    rates = CyclicSchedule(T0=1, T_mult=2, steps=7, phase="sgdr").rates()
    expected = [_cosine(0.1, 0.6, x) for x in (0, 0, 0.5, 0, 0.25, 0.5, 0.75)]
    assert rates == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="^phase='late': must be one of endpoint, sgdr$"):
        CyclicSchedule(phase="late")


def test_slower_annealing_row_rises_half_as_fast():
    # Table 2 "slower annealing" (conf/ablation/slower_annealing.yaml): T0=6, one rise over 6 steps
    from conftest import compose_config

    cfg = compose_config(["+ablation=slower_annealing"])
    schedule = CyclicSchedule(**{k: v for k, v in cfg.schedule.items() if k != "_target_"})
    assert schedule.rates()[:6] == pytest.approx([_cosine(0.1, 0.6, i / 5) for i in range(6)])
    assert schedule.rates()[6] == pytest.approx(0.1)  # restart, then a 12-step cycle
