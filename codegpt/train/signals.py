"""Preemption: SIGTERM / SIGUSR1 (Slurm's warning before it ends a job) make a run save and
stop at the next step boundary, every rank at the same one."""

from __future__ import annotations

import signal

import torch


class StopFlag:
    """Set by SIGTERM / SIGUSR1 while installed (a context manager: installed inside ``with``,
    the previous handlers restored after)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopFlag:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def requested(self, accelerator) -> bool:
        """Whether any rank got a signal: a collective call, so every rank stops together."""
        flag = torch.tensor([1.0 if self.signum else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)
