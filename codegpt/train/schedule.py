"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A pure function of the update number, so resuming at step s gives exactly the lr of the
uninterrupted run, and the test checks it against the formula directly.
"""

from __future__ import annotations

import math

import torch


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


def build_scheduler(optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int,
                    max_steps: int, min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose k-th ``step()`` call sets the lr of update k+1 (optimizer lr = peak)."""
    def factor(calls: int) -> float:
        return lr_at(calls + 1, peak_lr, warmup_steps, max_steps, min_lr_ratio) / peak_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
