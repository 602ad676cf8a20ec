"""Preemption: SIGTERM / SIGUSR1 (Slurm's warning before it ends a job) make a run save and
stop at the next step boundary, every rank at the same one.

A signal can come before the loop starts: Slurm sends ``--signal=USR1@T`` up to a minute early,
so a short job may get it while Python is still importing torch. ``catch_early``, called first
thing by ``train.py`` and ``codegpt train``, remembers such a signal instead of dying of it; the
loop's ``StopFlag`` takes it over and stops before its first update (exit 75, requeued).
No torch at import: this module is imported before it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_early: list[int] = []  # stop signals received before the loop's StopFlag was installed


def _remember(signum, frame) -> None:
    _early.append(signum)


def catch_early() -> dict[int, object]:
    """Until a ``StopFlag`` is installed, a stop signal is remembered, not fatal. Returns the
    handlers it replaced (only default ones are)."""
    replaced = {}
    for sig in STOP_SIGNALS:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                replaced[sig] = signal.signal(sig, _remember)
        except ValueError:  # not the main thread
            pass
    return replaced


@contextlib.contextmanager
def caught_early() -> Iterator[None]:
    """``catch_early`` while inside; the handlers it replaced are put back after, and nothing
    it remembered is left for a later run in this process."""
    replaced = catch_early()
    try:
        yield
    finally:
        for sig, handler in replaced.items():
            signal.signal(sig, handler)
        _early.clear()


class StopFlag:
    """Set by SIGTERM / SIGUSR1 while installed (a context manager: installed inside ``with``,
    the previous handlers restored after), or by one that ``catch_early`` remembered."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if _early:
            self.signum = _early[-1]
            _early.clear()
        for sig in STOP_SIGNALS:
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
        import torch

        flag = torch.tensor([1.0 if self.signum else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)
