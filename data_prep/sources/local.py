"""Local directories of Python files; by default the running interpreter's own library.

The default needs no network: the standard library and every site-packages folder of the
interpreter running the pipeline (hundreds of MB on a fresh machine).

The repository of a file is named after the root it was found in (``stdlib``,
``site-packages``, or a given root's folder name) and at most its first two folders under that
root, so that one big package does not become one huge repository (which would make
repository-level train/validation splits lumpy):

- ``numpy/core/x.py`` and ``numpy/core/tests/y.py``: ``site-packages/numpy/core``
- ``numpy/__init__.py``, a file directly in a top-level package: ``site-packages/numpy``
- ``os.py``, a top-level module: ``stdlib/os``
"""

from __future__ import annotations

import errno
import logging
import os
import site
import sysconfig
from pathlib import Path, PurePath
from typing import Iterator

from data_prep.sources.base import RawFile, Source, read_bounded, shard

log = logging.getLogger(__name__)


def repo_name(label: str, rel: PurePath) -> str:
    """The repository of the file at ``rel`` under a root labelled ``label`` (see above)."""
    folders = rel.parts[:-1][:2]
    return "/".join((label, *folders)) if folders else f"{label}/{rel.stem}"


def default_roots() -> list[tuple[str, Path]]:
    """(label, folder) for the stdlib and each site-packages folder of this interpreter."""
    paths = sysconfig.get_paths()
    roots: list[tuple[str, Path]] = [("stdlib", Path(paths["stdlib"]))]
    seen = {roots[0][1].resolve()}
    for p in [paths.get("purelib"), paths.get("platlib"), *site.getsitepackages()]:
        if p and Path(p).is_dir() and Path(p).resolve() not in seen:
            seen.add(Path(p).resolve())
            roots.append(("site-packages", Path(p)))
    return roots


class LocalSource(Source):
    name = "local"

    def __init__(self, roots: list[str] | None = None, extensions: list[str] | None = None,
                 max_read_bytes: int = 1_000_000, exclude_dirs: list[str] | None = None):
        """roots: folders to walk (default: stdlib + site-packages); files ending in one of
        ``extensions`` (default .py) are read; at most ``max_read_bytes`` + 1 bytes are read of
        a file, so a huge file costs nothing and is still rejected by size with its real size.
        An empty ``roots`` list is refused (it would read the interpreter's own files)."""
        if roots is not None and not isinstance(roots, (list, tuple)):
            raise ValueError(f"roots must be a list of folders, got {roots!r}")
        if roots is not None and not roots:
            raise ValueError("roots is empty: name at least one folder, or leave roots out to "
                             "read the interpreter's own files (stdlib and site-packages)")
        if roots:
            self.roots = [(Path(r).name or str(r), Path(r)) for r in roots]
            for _, r in self.roots:
                if not r.is_dir():
                    raise FileNotFoundError(f"local source root {r} is not a folder")
        else:
            self.roots = default_roots()
        self.extensions = tuple(extensions or [".py"])
        self.max_read_bytes = max_read_bytes
        self.exclude_dirs = set(exclude_dirs or ["__pycache__", ".git"])

    def list_paths(self) -> list[tuple[str, Path, Path]]:
        """Every candidate file as (label, root, path), sorted; a nested root is walked once."""
        found = []
        root_set = {r for _, r in self.roots}
        for label, root in self.roots:
            # the stdlib folder holds the base interpreter's site-packages: not stdlib code
            skip = self.exclude_dirs | ({"site-packages", "dist-packages"} if label == "stdlib" else set())
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                d = Path(dirpath)
                dirnames[:] = sorted(n for n in dirnames if n not in skip and d / n not in root_set)
                found.extend((label, root, d / n) for n in filenames if n.endswith(self.extensions))
        found.sort(key=lambda t: (t[0], str(t[1]), str(t[2])))
        return found

    def iter_files(self, rank: int = 0, world_size: int = 1) -> Iterator[RawFile]:
        for label, root, path in shard(self.list_paths(), rank, world_size):
            yield self.read(label, root, path)

    def read(self, label: str, root: Path, path: Path) -> RawFile:
        rel = path.relative_to(root)
        rec = RawFile(source="local", repo_name=repo_name(label, rel), path=rel.as_posix(), data=None)
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:
                rec.error = "symlink_loop"
                return rec
            except OSError as e:
                rec.error = "symlink_loop" if e.errno == errno.ELOOP else "broken_symlink"
                return rec
        return read_bounded(rec, path, self.max_read_bytes)
