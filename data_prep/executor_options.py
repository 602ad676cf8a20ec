"""Checks of the scheduler options a prep config passes to datatrove's executors
(``executor.slurm``, ``executor.ray``): one rule set, so that both name a bad option alike.

Each key must be one the executor takes (an unknown one gets the closest known name), not one
codegpt sets itself, not one codegpt's runner does not support, and its value must pass that
option's check. Options without a check are passed through as they are."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from codegpt.errors import ConfigError

Check = tuple[Callable[[Any], bool], str]  # (does the value pass, what it must be)


def whole(least: int, what: str | None = None) -> Check:
    """An integer (not a bool) >= ``least``; ``what`` says so in other words."""
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least,
            what or f"a whole number >= {least}")


def number(least: float, strict: bool = False) -> Check:
    """A finite int or float (not a bool) >= ``least`` (> with ``strict``)."""
    def ok(v: Any) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v > least if strict else v >= least))
    return ok, f"a number {'>' if strict else '>='} {least:g}"


FLAG: Check = (lambda v: isinstance(v, bool), "true or false")


def check_options(section: str, options: Mapping, *, known: Iterable[str],
                  set_by_codegpt: Iterable[str], values: Mapping[str, Check],
                  unsupported: Mapping[str, str] | None = None) -> None:
    """Raise a ConfigError naming the first bad entry of ``options`` (the mapping at config
    key ``section``, for example ``executor.slurm``)."""
    set_by_codegpt, unsupported = set(set_by_codegpt), dict(unsupported or {})
    allowed = sorted(set(known) - set_by_codegpt - set(unsupported))
    for key, value in options.items():
        if not isinstance(key, str):
            raise ConfigError(f"{section}: option names are strings, got {key!r}")
        if key in set_by_codegpt:
            raise ConfigError(f"{section}.{key} is set by codegpt (from executor.tasks, "
                              "executor.workers, out_dir and the pipeline): remove it")
        if key in unsupported:
            raise ConfigError(f"{section}.{key} is not supported: {unsupported[key]}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown option '{section}.{key}'{hint} (known: "
                              f"{', '.join(allowed)})")
        check = values.get(key)
        if check is not None and not check[0](value):
            raise ConfigError(f"{section}.{key} must be {check[1]}, got {value!r}")
