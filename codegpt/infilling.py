"""HumanEval infilling: the single-line and multi-line sets derived from HumanEval, or any file in
the human-eval-infilling layout.

The construction is InCoder's (Fried et al. 2022), which Bavarian et al. (2022) reused for the
sets they published (openai/human-eval-infilling), made here from the ``human-eval`` package's
164 problems, deterministically:

* a problem's canonical solution, trailing whitespace removed, is split into lines;
* **single-line**: each line that is not blank is masked in turn: 1,033 tasks;
* **multi-line**: each contiguous run of lines that starts and ends on a line that is not blank
  (blank lines inside it are masked too) is masked in turn: 5,815 tasks;
* the task's ``prompt`` is HumanEval's prompt and the lines before the span, its
  ``canonical_solution`` (the middle) the span's lines, its ``suffix`` the lines after it, each
  ending in a newline, so that ``prompt + canonical_solution + suffix`` is the canonical
  program; ``test`` and ``entry_point`` are HumanEval's;
* task ids name the span by its first and last line (0-based):
  ``SingleLineInfilling/HumanEval/12/L3``, ``MultiLineInfilling/HumanEval/12/L3_L5``.

A file (``--problems``) is JSONL(.gz) with ``task_id``, ``prompt``, ``suffix``, ``test``,
``entry_point`` and, where known, ``canonical_solution`` (the published random-span sets, for
instance); a bad row is refused by its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from codegpt.errors import DataError
from codegpt.problems import check_problems, load_problems, read_jsonl

FIELDS = ("task_id", "prompt", "suffix", "test", "entry_point")


@dataclass(frozen=True)
class InfillingSet:
    name: str
    title: str
    prefix: str        # of its task ids
    tasks: int         # how many the construction gives on HumanEval
    multi: bool        # spans of several lines


SETS = {
    "single-line": InfillingSet("single-line", "HumanEval single-line infilling",
                                "SingleLineInfilling", 1033, False),
    "multi-line": InfillingSet("multi-line", "HumanEval multi-line infilling",
                               "MultiLineInfilling", 5815, True),
}


def spans(solution: str, multi: bool) -> list[tuple[int, int]]:
    """The (first, last) line of every span the construction masks in a canonical solution."""
    lines = solution.rstrip().split("\n")
    solid = [i for i, line in enumerate(lines) if line.strip()]
    if not multi:
        return [(i, i) for i in solid]
    return [(i, j) for a, i in enumerate(solid) for j in solid[a:]]


def _joined(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def derive(problems: dict[str, dict], name: str) -> dict[str, dict]:
    """The set ``name`` (single-line, multi-line) made from HumanEval-layout problems."""
    s = SETS[name]
    out: dict[str, dict] = {}
    for task_id, p in problems.items():
        lines = p["canonical_solution"].rstrip().split("\n")
        for i, j in spans(p["canonical_solution"], s.multi):
            span = f"L{i}" if not s.multi else f"L{i}_L{j}"
            out[f"{s.prefix}/{task_id}/{span}"] = {
                "task_id": f"{s.prefix}/{task_id}/{span}",
                "prompt": p["prompt"] + _joined(lines[:i]),
                "canonical_solution": _joined(lines[i:j + 1]),
                "suffix": _joined(lines[j + 1:]),
                "test": p["test"], "entry_point": p["entry_point"]}
    return out


def load_infilling(name: str, path: str | Path = "") -> dict[str, dict]:
    """The infilling problems: a file in the human-eval-infilling layout when ``path`` is
    given, else the set ``name`` derived from the ``human-eval`` package's HumanEval."""
    if name not in SETS:
        raise DataError(f"unknown infilling set {name!r} (known: {', '.join(SETS)})")
    if not path:
        return derive(load_problems(None, fields=("task_id", "prompt", "canonical_solution",
                                                  "test", "entry_point")), name)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"infilling problems file {path} does not exist; give a JSONL(.gz) file "
                        f"with {', '.join(FIELDS)} and canonical_solution where known")
    rows = read_jsonl(path)
    problems = check_problems(rows, FIELDS)
    for where, row in rows:
        solution = row.get("canonical_solution") if isinstance(row, dict) else None
        if solution is not None and not isinstance(solution, str):
            raise DataError(f"{where}: canonical_solution must be a string (or absent)")
    if not problems:
        raise DataError(f"infilling problems file {path} holds no problems")
    return dict(sorted(problems.items(), key=lambda kv: _order(kv[0])))


def _order(task_id: str) -> tuple:
    """Task order: by the numbers in the id (HumanEval/2 before HumanEval/10), then by name."""
    return tuple(int(x) for x in re.findall(r"\d+", task_id)), task_id
