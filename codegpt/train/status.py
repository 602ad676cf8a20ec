"""What a training run tells the world while it runs: ``status.json`` and the progress bar.

``status.json`` says whether the run is running, finished, preempted or failed (and why), at
which step, and its newest whole checkpoint; the Slurm script, ``codegpt report`` and a person
read it. The progress bar is for a person at a terminal only.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from codegpt.errors import NonFiniteLossError
from codegpt.io import atomic_write_json, overwrite_in_place
from codegpt.outputs import is_disk_full
from codegpt.train.budget import TimeBudget


class StatusFile:
    """``status.json`` in the run folder ``run_dir``, replaced whole at every write."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "status.json"

    def write(self, status: str, step: int, last_checkpoint: Path | None, **extra) -> None:
        """Record ``status`` at ``step`` with the run's newest whole checkpoint; ``extra``:
        more fields (``reason``)."""
        record = {"status": status, "step": step, **extra,
                  "last_checkpoint": str(last_checkpoint) if last_checkpoint else None}
        try:
            atomic_write_json(self.path, record)
        except OSError as e:
            if not is_disk_full(e):
                raise
            # no room for a second copy: write over the old one, whose blocks are there
            overwrite_in_place(self.path, json.dumps(record) + "\n")


def failure_reason(e: BaseException, run_dir: Path) -> str:
    """The ``reason`` a failed run's status file gives for ``e``: short, for a person."""
    return ("non-finite loss" if isinstance(e, NonFiniteLossError)
            else "interrupted" if isinstance(e, KeyboardInterrupt)
            else "disk full" if is_disk_full(e, run_dir)
            else f"{type(e).__name__}: {e}"[:300])


class ProgressBar:
    """Updates of run.max_steps; under a time budget, seconds of the budget (the clock ends the
    run). Shown on a terminal only (``enabled``: the main process): in a log file
    metrics.jsonl and the checkpoint lines tell it."""

    def __init__(self, enabled: bool, step: int, max_steps: int, budget: TimeBudget):
        self.budget = budget
        disable = None if enabled else True  # None: shown only when stderr is a terminal
        if budget.enabled:
            total = int(budget.seconds)
            self.bar = tqdm(total=total, initial=min(total, int(budget.elapsed_before)),
                            disable=disable, desc="train", unit="s", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of the budget"
                                       "{postfix}")
        else:
            self.bar = tqdm(total=max_steps, initial=step, disable=disable, desc="train",
                            unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Update ``step`` is done with ``loss`` at ``tokens_per_s``."""
        if self.budget.enabled:  # the bar counts the budget's seconds
            self.bar.n = min(self.bar.total, int(self.budget.elapsed()))
            self.bar.set_postfix(step=step, loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        else:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")

    def close(self) -> None:
        self.bar.close()
