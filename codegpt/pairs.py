"""Codex-S pairs: the hand-off from ``codegpt sft-data`` to fine-tuning.

A pairs folder (the out_dir of ``codegpt sft-data``) holds ``train.jsonl`` and ``val.jsonl``:
one JSON object per line with a string ``prompt`` and a string ``completion`` (or, in a file of
human-eval / MBPP style, ``canonical_solution``), and optionally ``test`` (source defining
``check(candidate)``) with the ``entry_point`` it is called with, plus provenance (``source``,
``id``, ``repo_name``, ``path``). ``parse_row`` is the one parser of such a row: the builder reads
the user's JSONL files with it, training reads the pairs with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from codegpt.errors import DataError

SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl"}


def parse_row(line: str, where: str) -> dict:
    """One row as a dict whose ``completion`` is the solution (``completion`` or
    ``canonical_solution``); a DataError naming ``where`` for anything else."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a JSON object ({e.msg})") from e
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object")
    if not isinstance(row.get("prompt"), str):
        raise DataError(f"{where}: lacks a string 'prompt'")
    solution = row.get("completion", row.get("canonical_solution"))
    if not isinstance(solution, str):
        raise DataError(f"{where}: lacks a string 'completion' or 'canonical_solution'")
    for key in ("test", "entry_point"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DataError(f"{where}: '{key}' must be a string")
    if row.get("test") and not str(row.get("entry_point") or "").isidentifier():
        raise DataError(f"{where}: a row with a 'test' needs an 'entry_point' (the function's "
                        "name) that check(candidate) is called with")
    return {**row, "completion": solution}


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of each row of a pairs file (or a user's JSONL file of problems),
    each checked by ``parse_row``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    return [(n, parse_row(line, f"{path}:{n}"))
            for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_pairs(folder: str | Path, split: str) -> list[tuple[str, str]]:
    """(prompt, completion) of each row of a pairs folder's ``split``."""
    path = Path(folder) / SPLIT_FILES[split]
    if not path.is_file():
        raise DataError(f"no {path.name} in {path.parent}: data_dir must be the out_dir of "
                        "`codegpt sft-data` when data.format=sft")
    return [(row["prompt"], row["completion"]) for _, row in read_rows(path)]


def pairs_jsonl(records: Iterable[dict]) -> str:
    """Rows as a pairs file holds them."""
    return "".join(json.dumps(r) + "\n" for r in records)
