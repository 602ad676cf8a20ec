"""What every source hands the pipeline.

A source turns some origin (local folders, git repositories, GitHub search, a Hugging Face
dataset) into ``RawFile`` records. It never raises on one bad file or repository: it yields a
record with ``error`` set (and ``data=None``), which the pipeline counts as a rejection of the
stage ``read`` with that error as the reason, so every input is accounted for.

Work is split across pipeline tasks by ``rank`` / ``world_size``: a source yields only its
share, deterministically (the same files for the same rank and world size, in the same order).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@dataclass
class RawFile:
    source: str                 # "local", "git", "github", "hf"
    repo_name: str              # e.g. "numpy" or "owner/name"
    path: str                   # path inside the repository, "/"-separated
    data: bytes | None          # the raw bytes; None when the file could not be read
    license: str | None = None  # SPDX-like id when known ("mit", "apache-2.0", ...)
    stars: int | None = None
    commit: str | None = None
    error: str | None = None    # short machine-readable reason when data is None
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable document id: the same file from the same source always gets the same id."""
        return hashlib.sha1(f"{self.source}\0{self.repo_name}\0{self.path}".encode()).hexdigest()


class Source(ABC):
    """A source of raw files. Subclasses are configured from a dict (the YAML section)."""

    name: str = "source"

    @abstractmethod
    def iter_files(self, rank: int = 0, world_size: int = 1) -> Iterator[RawFile]:
        """Yield this task's share of files (and error records), deterministically."""


def shard(items: list, rank: int, world_size: int) -> list:
    """Every world_size-th item starting at rank: an even, deterministic split of a sorted list."""
    return items[rank::world_size]


def read_bounded(rec: RawFile, path: Path, max_read_bytes: int) -> RawFile:
    """Fill ``rec`` from a regular file, reading at most ``max_read_bytes`` + 1 bytes.

    ``extra["size"]`` gets the real size, so a huge file is rejected by size without being
    read whole. FIFOs and devices (which would block or never end), vanished files, symlink
    loops and unreadable files become error records instead of exceptions.
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            rec.error = "not_regular_file"
            return rec
        with open(path, "rb") as f:
            rec.data = f.read(max_read_bytes + 1)
        rec.extra["size"] = max(st.st_size, len(rec.data))
    except OSError as e:
        rec.data = None
        if e.errno == errno.ELOOP:
            rec.error = "symlink_loop"
        elif e.errno == errno.ENOENT:
            rec.error = "broken_symlink" if path.is_symlink() else "vanished"
        else:
            rec.error = "unreadable"
            log.warning("cannot read %s: %s", path, e)
    return rec
