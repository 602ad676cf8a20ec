import math

import pytest
import torch

from codegpt.train.schedule import build_scheduler, lr_at

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


def test_torch_scheduler_sets_the_formula_lr_for_each_update():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=PEAK)
    sched = build_scheduler(opt, PEAK, 10, 50, RATIO)
    for step in range(1, 60):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, PEAK, 10, 50, RATIO))
        opt.step()
        sched.step()


def test_update_numbers_start_at_one():
    with pytest.raises(ValueError):
        lr_at(0, PEAK, WARMUP, MAX, RATIO)


def test_time_budget_decays_by_the_clock_when_it_runs_ahead_of_the_steps():
    from codegpt.train.schedule import lr_at_time

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
