"""A run's wall-time budget (``run.max_minutes``): how much of it is spent, read the same way
on every rank.

The clock counts the training loop of this process and of the ones it resumes (their seconds
are ``elapsed_s`` in the checkpoint). It is read at fixed points only, once before the loop and
once after each update, before that update's checkpoint: every rank then sees the same reading
(rank 0's, broadcast), so they all stop after the same update, and the last update's
checkpoint records a spent budget (a run started again from it does nothing more).
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import broadcast


class TimeBudget:
    """The budget of ``max_minutes`` (0: none) of a run on ``accelerator``'s processes.

    ``fraction`` is the share spent at the last reading (``start``, ``read``): None for a run
    without a budget, so the lr follows the steps alone; ``spent`` whether it reached 1."""

    def __init__(self, max_minutes: float, accelerator):
        self.max_minutes = max_minutes
        self.seconds = max_minutes * 60.0
        self.accelerator = accelerator
        self.elapsed_before = 0.0  # wall seconds of the loop in earlier processes (resumes)
        self._start: float | None = None  # when this process's loop began
        self.fraction: float | None = None

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def resume(self, elapsed_s: float) -> None:
        """Count the seconds the resumed processes ran (a checkpoint's ``elapsed_s``)."""
        self.elapsed_before = float(elapsed_s)

    def start(self) -> None:
        """The loop begins: the clock runs from now, and is read once (a resumed run whose
        checkpoint spent the budget does no update)."""
        self._start = time.perf_counter()
        self.read()

    def elapsed(self) -> float:
        """Wall seconds the loop has run, this process and the ones it resumes."""
        start = self._start
        return self.elapsed_before + (time.perf_counter() - start if start is not None else 0.0)

    def read(self) -> float | None:
        """Read the clock: the share of the budget spent, rank 0's on every rank (a collective
        call where there is a budget: every rank reads at the same point). None without one."""
        if not self.enabled:
            return None
        acc = self.accelerator
        spent = torch.tensor([self.elapsed() / self.seconds], device=acc.device)
        if acc.num_processes > 1:
            spent = broadcast(spent, from_process=0)
        self.fraction = float(spent.item())
        return self.fraction

    @property
    def spent(self) -> bool:
        return self.fraction is not None and self.fraction >= 1.0

    @property
    def reason(self) -> str:
        """Why a run whose budget is spent stopped, for the log and the status file."""
        return f"run.max_minutes={self.max_minutes:g} spent"
