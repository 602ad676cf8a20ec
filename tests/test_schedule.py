import math

import pytest
import torch

from codegpt.train.config import OptimSection
from codegpt.train.schedule import Schedule, lr_at, lr_at_time

PEAK, WARMUP, MAX, RATIO = 6e-4, 100, 1100, 0.1


def test_linear_warmup_reaches_peak_at_its_end():
    assert lr_at(1, PEAK, WARMUP, MAX, RATIO) == pytest.approx(PEAK / WARMUP)
    assert lr_at(50, PEAK, WARMUP, MAX, RATIO) == pytest.approx(PEAK * 50 / WARMUP)
    assert lr_at(WARMUP, PEAK, WARMUP, MAX, RATIO) == pytest.approx(PEAK)


def test_cosine_midpoint_and_floor():
    floor = RATIO * PEAK
    mid = WARMUP + (MAX - WARMUP) // 2
    assert lr_at(mid, PEAK, WARMUP, MAX, RATIO) == pytest.approx((PEAK + floor) / 2)
    quarter = WARMUP + (MAX - WARMUP) // 4
    expected = floor + (PEAK - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(quarter, PEAK, WARMUP, MAX, RATIO) == pytest.approx(expected)
    assert lr_at(MAX, PEAK, WARMUP, MAX, RATIO) == pytest.approx(floor)
    assert lr_at(MAX + 500, PEAK, WARMUP, MAX, RATIO) == pytest.approx(floor)


def test_schedule_is_monotone_after_warmup():
    lrs = [lr_at(s, PEAK, WARMUP, MAX, RATIO) for s in range(WARMUP, MAX + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_schedule_gives_the_lrs_of_earlier_codegpt_bit_for_bit():
    """Schedule.lr is the formula's lr, and exactly the one torch's LambdaLR set for earlier
    codegpt (the peak times the formula's share of it, which differs from lr_at in the last bit
    at some steps of this schedule, the smoke config's): a run's metrics are unchanged."""
    peak, warmup, max_steps, ratio = 3e-3, 5, 30, 0.1
    schedule = Schedule(OptimSection(lr=peak, warmup_steps=warmup, min_lr_ratio=ratio),
                        max_steps=max_steps)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=peak)
    old = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda calls: lr_at(calls + 1, peak, warmup, max_steps, ratio) / peak)
    differs = 0
    for step in range(1, 40):
        formula = lr_at(step, peak, warmup, max_steps, ratio)
        assert schedule.lr(step) == opt.param_groups[0]["lr"]  # ==, not approx
        assert schedule.lr(step) == pytest.approx(formula)
        differs += schedule.lr(step) != formula
        opt.step()
        old.step()
    assert differs  # the test tells the two apart
    assert schedule.lr(20, 0.8) == lr_at_time(20, 0.8, peak, warmup, max_steps, ratio)


def test_scheduler_state_is_one_an_earlier_codegpt_resumes():
    """scheduler.pt holds a LambdaLR state: an earlier codegpt loaded it and took the step from
    last_epoch."""
    schedule = Schedule(OptimSection(lr=PEAK, warmup_steps=10, min_lr_ratio=RATIO), 50)
    p = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([p], lr=PEAK), lambda c: 1.0)
    old.load_state_dict(schedule.state_dict(12, groups=1))
    assert old.last_epoch == 12 and old.base_lrs == [PEAK]
    assert old.get_last_lr() == [schedule.lr(13)]


def test_update_numbers_start_at_one():
    with pytest.raises(ValueError):
        lr_at(0, PEAK, WARMUP, MAX, RATIO)


def test_time_budget_decays_by_the_clock_when_it_runs_ahead_of_the_steps():
    floor = RATIO * PEAK
    # warmup is by steps whatever the clock says
    assert lr_at_time(WARMUP // 2, 0.9, PEAK, WARMUP, MAX, RATIO) == pytest.approx(PEAK / 2)
    # no time spent: the step schedule
    assert lr_at_time(600, 0.0, PEAK, WARMUP, MAX, RATIO) == pytest.approx(
        lr_at(600, PEAK, WARMUP, MAX, RATIO))
    # half the time spent at 10% of the decay's steps: the cosine's midpoint
    assert lr_at_time(WARMUP + 100, 0.5, PEAK, WARMUP, MAX, RATIO) == pytest.approx(
        (PEAK + floor) / 2)
    # the budget spent: the floor
    assert lr_at_time(WARMUP + 1, 1.0, PEAK, WARMUP, MAX, RATIO) == pytest.approx(floor)
    assert lr_at_time(WARMUP + 1, 3.0, PEAK, WARMUP, MAX, RATIO) == pytest.approx(floor)
