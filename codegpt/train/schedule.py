"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

``lr_at`` and ``lr_at_time`` are pure functions of the update number (and of the spent share of
a time budget), so resuming at step s gives exactly the lr of the uninterrupted run, and the
tests check them against the formula directly. ``Schedule`` applies them to a run's ``optim``
section; ``ScheduledOptimizer`` (``optim.py``) asks it for the lr of every update.
"""

from __future__ import annotations

import math

from codegpt.train.config import OptimSection


def lr_at(step: int, peak_lr: float, warmup_steps: int, max_steps: int,
          min_lr_ratio: float = 0.1) -> float:
    """The lr of update number ``step`` (1-based, as logged).

    warmup:  peak * step / warmup              for step <= warmup
    decay:   floor + (peak - floor) * (1 + cos(pi * p)) / 2,  p = (step - warmup) / (max - warmup)
    after max_steps the lr stays at the floor = min_lr_ratio * peak.
    """
    if step < 1:
        raise ValueError(f"update numbers start at 1, got {step}")
    floor = min_lr_ratio * peak_lr
    if warmup_steps > 0 and step <= warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= max_steps:
        return floor
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at_time(step: int, time_fraction: float, peak_lr: float, warmup_steps: int,
               max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The lr of update ``step`` in a run with a wall-time budget (``run.max_minutes``), of
    which ``time_fraction`` is spent: the same warmup and cosine, but the decay's progress is
    the larger of the step fraction and the time fraction, so the lr reaches its floor at the
    deadline however fast the machine is (or at max_steps, if that comes first)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr_at(step, peak_lr, warmup_steps, max_steps, min_lr_ratio)
    floor = min_lr_ratio * peak_lr
    by_steps = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(1.0, max(by_steps, time_fraction))
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """The lr of every update of a run: the ``optim`` section's peak, warmup and floor, decayed
    over ``max_steps`` (run.max_steps) updates, or by the clock as well under a time budget.

    It holds no state besides the config: the lr of update k depends on k (and the budget's
    spent share) only, so a resumed run needs nothing from the checkpoint to continue it, and a
    run whose max_steps was raised follows the schedule as configured now."""

    def __init__(self, optim: OptimSection, max_steps: int):
        self.peak, self.warmup, self.floor_ratio = optim.lr, optim.warmup_steps, optim.min_lr_ratio
        self.max_steps = max_steps

    def lr(self, step: int, time_fraction: float | None = None) -> float:
        """The lr of update ``step`` (1-based); ``time_fraction``: the spent share of the run's
        time budget, None for a run without one."""
        if time_fraction is not None:
            return lr_at_time(step, time_fraction, self.peak, self.warmup, self.max_steps,
                              self.floor_ratio)
        # the peak times the formula's share of it, as torch's LambdaLR computed it for earlier
        # codegpt, which can differ from lr_at in the last bit: a run's lrs (and so its losses)
        # stay bit for bit those of the same config trained before
        return self.peak * (lr_at(step, self.peak, self.warmup, self.max_steps,
                                  self.floor_ratio) / self.peak)

    def state_dict(self, step: int, groups: int) -> dict:
        """What ``scheduler.pt`` holds after ``step`` updates: nothing this codegpt reads back,
        but the state of a torch ``LambdaLR`` over ``groups`` parameter groups, so an earlier
        codegpt (which loaded one and took the step from ``last_epoch``) can resume it."""
        return {"base_lrs": [self.peak] * groups, "last_epoch": step, "_step_count": step + 1,
                "_last_lr": [self.lr(step + 1)] * groups, "lr_lambdas": [None] * groups}
