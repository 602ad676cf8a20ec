"""Atomic file writes: a temp name in the same folder, fsync, then rename.

A reader (or a resumed run) never sees a half-written file where it expects a whole one, and a
write that fails (a full disk) removes its temp file. Whole output folders are written aside
and swapped in by ``codegpt.outputs``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def overwrite_in_place(path: str | Path, text: str) -> None:
    """Write ``text`` over the file at ``path`` in place, for when the disk is too full for an
    atomic write's second copy: a small file's blocks are already allocated, so it fits where
    a new file would not (not atomic: only for a last word such as a run's status)."""
    with open(path, "r+b" if Path(path).exists() else "wb") as f:
        f.write(text.encode("utf-8"))
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
