"""Git repositories by URL: shallow-clone each, check its license, yield its Python files.

Each task clones only its share of the (sorted) URLs into a cache folder named from the URL, and
writes a marker beside a clone once it is complete, so a restarted run reuses finished clones
instead of fetching them again. By default a clone is a partial, sparse one (``--filter=blob:none``
plus a sparse checkout of ``*.py`` and the root license files): only the blobs we read are
downloaded, which on real repositories (datasets, images, notebooks) is most of the saving.

A repository whose license is missing or outside the allowlist yields one error record (path
``""``) rather than its files, so it is counted in the pipeline's statistics without its code
entering the corpus; a repository that cannot be cloned likewise yields one ``clone_failed``
record. Nothing here raises on one bad repository or file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from codegpt.errors import SourceError
from codegpt.io import atomic_write_json
from data_prep.sources.base import RawFile, Source, read_bounded, shard

log = logging.getLogger(__name__)

DEFAULT_LICENSES = ("mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense",
                    "0bsd", "python-2.0", "mpl-2.0")
# Ids detect_license can return; a hint naming one of these outside the allowlist is trusted.
KNOWN_LICENSES = frozenset(DEFAULT_LICENSES) | {
    "gpl-2.0", "gpl-3.0", "lgpl-2.0", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "bsd-4-clause"}
# Root files that may hold the license, most conventional first.
LICENSE_NAMES = ("license", "license.txt", "license.md", "license.rst", "licence", "licence.txt",
                 "licence.md", "copying", "copying.txt", "copying.md")
# Sparse-checkout patterns (gitignore syntax, case-sensitive, hence the brackets).
SPARSE_PATTERNS = ("*.py", "/[Ll][Ii][Cc][Ee][Nn][CcSs][Ee]*", "/[Cc][Oo][Pp][Yy][Ii][Nn][Gg]*")
MAX_LICENSE_BYTES = 256_000
MARKER_SUFFIX = ".clone.json"

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",   # a private or missing repo fails instead of asking for a password
    "GIT_ASKPASS": "true",        # ... also where a credential helper would prompt
    "GIT_LFS_SKIP_SMUDGE": "1",   # LFS objects are data, not code: never download them
}


# --- license detection (pure) ----------------------------------------------------------------

def _norm(text: str) -> str:
    """Lowercase, straighten quotes and collapse whitespace and comment markers, so a phrase
    matches however the file was wrapped, indented or commented."""
    text = text.lower().replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    text = re.sub(r"(?m)^\s*(#|//|\*|;|--)+", " ", text)
    return re.sub(r"\s+", " ", text)


def _gnu_version(text: str, start: int, default: str) -> str:
    """The version number stated right after a GNU license's title (e.g. 'Version 2.1')."""
    m = re.search(r"version (\d(?:\.\d)?)", text[start:start + 400])
    return m.group(1) if m else default


# Each rule: a characteristic phrase (normalised) and how to name what it found. The license
# whose phrase appears first in the file wins: a LICENSE that is Apache-2.0 followed by third-party
# MIT notices is Apache-2.0; the LGPL text mentions the GPL, but only after its own title.
def _gpl(t: str, i: int) -> str:
    return "gpl-3.0" if _gnu_version(t, i, "3").startswith("3") else "gpl-2.0"


def _lgpl(t: str, i: int) -> str:
    v = _gnu_version(t, i, "3")
    return "lgpl-3.0" if v.startswith("3") else "lgpl-2.1" if v == "2.1" else "lgpl-2.0"


def _bsd(t: str, i: int) -> str:
    tail = t[i:]
    if "all advertising materials mentioning features" in tail:
        return "bsd-4-clause"
    if "neither the name" in tail or "names of its contributors may" in tail \
            or "name of the copyright holder nor" in tail:
        return "bsd-3-clause"
    return "bsd-2-clause"


def _apache(t: str, i: int) -> str | None:
    # "Apache License, Version 2.0", "Apache License\n Version 2.0, January 2004", "Apache
    # Software License 2.0"; versions 1.x are not named
    ok = re.match(r"apache (software )?license,? (version |v\.? ?)?2\.0", t[i:i + 50])
    return "apache-2.0" if ok else None


def _isc_or_0bsd(t: str, i: int) -> str:
    return "isc" if "provided that the above copyright notice" in t[i:i + 400] else "0bsd"


LICENSE_RULES: tuple[tuple[str, Callable[[str, int], str | None]], ...] = (
    ("gnu affero general public license", lambda t, i: "agpl-3.0"),
    ("gnu lesser general public license", _lgpl),
    ("gnu library general public license", lambda t, i: "lgpl-2.0"),
    ("gnu general public license", _gpl),
    ("apache license", _apache),
    ("apache software license", _apache),
    ("mozilla public license version 2.0", lambda t, i: "mpl-2.0"),
    ("mozilla public license, version 2.0", lambda t, i: "mpl-2.0"),
    ("mozilla public license, v. 2.0", lambda t, i: "mpl-2.0"),
    ("python software foundation license version 2", lambda t, i: "python-2.0"),
    ("this is free and unencumbered software released into the public domain",
     lambda t, i: "unlicense"),
    ("permission is hereby granted, free of charge, to any person obtaining a copy",
     lambda t, i: "mit"),
    ("permission to use, copy, modify, and/or distribute this software for any purpose",
     _isc_or_0bsd),
    ("permission to use, copy, modify, and distribute this software for any purpose with or "
     "without fee", _isc_or_0bsd),
    ("redistribution and use in source and binary forms, with or without modification, are "
     "permitted", _bsd),
)


def detect_license(text: str) -> str | None:
    """SPDX-like id (lowercase) of the license a LICENSE/COPYING text states, or None.

    Matches characteristic phrases rather than whole texts, so copyright lines, wrapping and
    small edits do not matter; when several licenses appear, the first one in the file wins.
    """
    t = _norm(text)
    found = sorted((i, n) for n, (phrase, _) in enumerate(LICENSE_RULES)
                   if (i := t.find(phrase)) >= 0)
    for i, n in found:
        lic = LICENSE_RULES[n][1](t, i)
        if lic:
            return lic
    return None


def find_license_file(root: Path) -> Path | None:
    """The repository's root license file: a conventional name first, else any LICENSE*/COPYING*
    (e.g. LICENSE-MIT); never a symlink that leaves the repository."""
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError:
        return None
    by_lower = {n.lower(): n for n in reversed(names)}
    candidates = [by_lower[n] for n in LICENSE_NAMES if n in by_lower]
    candidates += [n for n in names if n.lower().startswith(("license", "licence", "copying"))]
    real_root = os.path.realpath(root)
    for name in candidates:
        path = root / name
        real = os.path.realpath(path)
        if os.path.isfile(real) and _inside(real, real_root):
            return path
    return None


def repo_license(root: Path) -> str | None:
    """Detected license of a checked-out repository, None when there is no readable license."""
    path = find_license_file(root)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_LICENSE_BYTES).decode("utf-8", errors="replace")
    except OSError as e:
        log.warning("cannot read license file %s: %s", path, e)
        return None
    return detect_license(text)


# --- URLs ------------------------------------------------------------------------------------

def parse_repo_name(url: str) -> str:
    """'owner/name' of a repository URL; for file:// URLs and local paths the last two path
    components. Handles https://host/owner/name(.git), ssh://... and git@host:owner/name."""
    u = url.strip().rstrip("/")
    scp = re.match(r"^[\w.-]+@[\w.-]+:(?!//)(.+)$", u)
    if scp:
        path = scp.group(1)
    elif "://" in u:
        path = urlparse(u).path
    else:
        path = u
    path = path.rstrip("/")
    if path.endswith(".git"):
        path = path[:-4]
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts:
        raise ValueError(f"cannot tell the repository name of URL {url!r}: it has no path")
    return "/".join(parts[-2:])


def clone_dir_name(url: str) -> str:
    """A deterministic, filesystem-safe folder name for a URL: readable name plus a hash, so two
    URLs with the same owner/name (different hosts or forks of a path) never share a folder."""
    try:
        readable = parse_repo_name(url).replace("/", "__")
    except ValueError:
        readable = "repo"
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", readable)[:80]
    return f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class RepoSpec:
    """One repository to read: its URL plus what a discovery step may already know."""
    url: str
    repo_name: str
    stars: int | None = None
    license_hint: str | None = None  # e.g. GitHub's detection; used when the files say nothing


def to_spec(entry: str | dict) -> RepoSpec:
    """A RepoSpec from a config entry: a URL string or {url, stars?, license?, repo_name?}."""
    if isinstance(entry, str):
        return RepoSpec(url=entry, repo_name=parse_repo_name(entry))
    if not isinstance(entry, dict) or not entry.get("url"):
        raise ValueError(f"git source entry {entry!r} must be a URL or a mapping with a 'url'")
    unknown = set(entry) - {"url", "stars", "license", "repo_name"}
    if unknown:
        raise ValueError(f"git source entry for {entry['url']} has unknown keys {sorted(unknown)}; "
                         "allowed: url, stars, license, repo_name")
    lic = entry.get("license")
    return RepoSpec(url=entry["url"],
                    repo_name=entry.get("repo_name") or parse_repo_name(entry["url"]),
                    stars=None if entry.get("stars") is None else int(entry["stars"]),
                    license_hint=lic.lower() if isinstance(lic, str) else None)


def read_url_file(path: str | Path) -> list[str | dict]:
    """Entries from a file: JSON lines (as written by the GitHub discovery) or one URL a line;
    blank lines and '#' comments are skipped."""
    entries: list[str | dict] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e}); "
                                     "fix or remove the line") from e
            else:
                entries.append(line)
    return entries


# --- running git -----------------------------------------------------------------------------

class GitError(SourceError):
    """A git command that failed or timed out; the message carries git's stderr."""


def run_git(args: list[str], cwd: Path | None = None, timeout: float | None = None) -> str:
    """Run git non-interactively and return stdout. On timeout the whole process group is killed
    (clone spawns helpers such as git-remote-https that would otherwise outlive it)."""
    env = {**os.environ, **GIT_ENV}
    try:
        proc = subprocess.Popen(["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        raise GitError(f"cannot run git ({e}); install git and make sure it is on PATH") from e
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise GitError(f"git {args[0]} timed out after {timeout:.0f}s")
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} exited with {proc.returncode}: "
                       f"{err.decode(errors='replace').strip()[-2000:]}")
    return out.decode(errors="replace").strip()


def _inside(path: str, root: str) -> bool:
    """Whether a resolved path lies within a resolved root folder."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --- the source ------------------------------------------------------------------------------

class GitSource(Source):
    """Python files of git repositories, each cloned shallowly and checked for its license."""

    name = "git"

    def __init__(self, urls: list[str | dict] | None = None, urls_file: str | None = None,
                 cache_dir: str = "runs/data/repos", licenses: list[str] | None = None,
                 clone_timeout: float = 600.0, retries: int = 2, retry_backoff: float = 5.0,
                 sparse: bool = True, max_read_bytes: int = 1_000_000,
                 sleep: Callable[[float], None] = time.sleep):
        """urls: repository URLs, each a string or {url, stars, license, repo_name} (``license``
        is a hint used when the repository has no recognisable license file; one naming a known
        license outside the allowlist skips the clone); urls_file: more entries, as JSON lines
        or one URL a line; cache_dir: where clones live (reused by a restarted run); licenses:
        the allowlist of SPDX-like ids (add "unknown" to accept repositories without a detected
        license); clone_timeout: seconds for one clone attempt; retries: further attempts after a
        failed clone, waiting retry_backoff * 2**attempt seconds; sparse: fetch and check out only
        *.py files and the root license files; max_read_bytes: read at most this + 1 bytes of a
        file (a larger one is rejected by size downstream, with its real size in extra["size"])."""
        entries = list(urls or [])
        if urls_file:
            entries += read_url_file(urls_file)
        if not entries:
            raise ValueError("git source needs repositories: set 'urls' (a list of URLs) or "
                             "'urls_file' (a file of URLs or JSON lines)")
        specs: dict[str, RepoSpec] = {}
        for e in entries:
            spec = to_spec(e)
            specs.setdefault(spec.url, spec)  # the first mention of a URL wins
        self.repos = sorted(specs.values(), key=lambda s: s.url)
        self.cache_dir = Path(cache_dir)
        self.licenses = frozenset(x.lower() for x in (licenses or DEFAULT_LICENSES))
        if retries < 0 or clone_timeout <= 0:
            raise ValueError(f"git source needs retries >= 0 and clone_timeout > 0, got "
                             f"retries={retries}, clone_timeout={clone_timeout}")
        self.clone_timeout, self.retries, self.retry_backoff = clone_timeout, retries, retry_backoff
        self.sparse, self.max_read_bytes, self.sleep = sparse, max_read_bytes, sleep

    # -- iteration --

    def iter_files(self, rank: int = 0, world_size: int = 1) -> Iterator[RawFile]:
        for spec in shard(self.repos, rank, world_size):
            try:
                yield from self.repo_files(spec)
            except Exception as e:  # one repository must never stop the others
                log.exception("reading repository %s failed", spec.url)
                yield self._repo_error(spec, f"repo_failed:{type(e).__name__}")

    def repo_files(self, spec: RepoSpec) -> Iterator[RawFile]:
        """The records of one repository: its files, or one error record saying why not."""
        if spec.license_hint in KNOWN_LICENSES and not self.allowed(spec.license_hint):
            # the discovery already named a license we would reject: spare the download
            yield self._repo_error(spec, f"license_not_allowed:{spec.license_hint}",
                                   license=spec.license_hint)
            return
        cloned = self.ensure_clone(spec)
        if cloned is None:
            yield self._repo_error(spec, "clone_failed")
            return
        root, commit = cloned
        lic = repo_license(root) or spec.license_hint
        if not self.allowed(lic):
            reason = f"license_not_allowed:{lic}" if lic else "license_unknown"
            log.info("skipping %s: %s", spec.url, reason)
            yield self._repo_error(spec, reason, license=lic, commit=commit)
            return
        for rel in list_python_files(root):
            rec = read_file(root, rel, self.max_read_bytes)
            rec.repo_name, rec.license, rec.commit = spec.repo_name, lic, commit
            rec.stars = spec.stars
            rec.extra["url"] = spec.url
            yield rec

    def allowed(self, lic: str | None) -> bool:
        return (lic or "unknown") in self.licenses

    def _repo_error(self, spec: RepoSpec, error: str, license: str | None = None,
                    commit: str | None = None) -> RawFile:
        return RawFile(source="git", repo_name=spec.repo_name, path="", data=None, license=license,
                       stars=spec.stars, commit=commit, error=error, extra={"url": spec.url})

    # -- cloning --

    def clone_path(self, url: str) -> Path:
        return self.cache_dir / clone_dir_name(url)

    def ensure_clone(self, spec: RepoSpec) -> tuple[Path, str] | None:
        """(working tree, commit) of a complete clone, cloning if needed; None after the retries
        are spent. A clone counts as complete only once its marker exists."""
        dest = self.clone_path(spec.url)
        marker = dest.with_name(dest.name + MARKER_SUFFIX)
        reused = self._read_marker(marker, dest, spec.url)
        if reused:
            log.debug("reusing clone of %s at %s", spec.url, dest)
            return dest, reused
        for attempt in range(self.retries + 1):
            try:
                commit = self.clone(spec.url, dest)
            except GitError as e:
                log.warning("clone of %s failed (attempt %d of %d): %s", spec.url, attempt + 1,
                            self.retries + 1, e)
                if attempt < self.retries:
                    self.sleep(self.retry_backoff * 2 ** attempt)
                continue
            atomic_write_json(marker, {"url": spec.url, "commit": commit, "sparse": self.sparse})
            return dest, commit
        log.error("giving up on %s after %d attempts", spec.url, self.retries + 1)
        return None

    def _read_marker(self, marker: Path, dest: Path, url: str) -> str | None:
        """The commit recorded by a finished clone of this URL, if one is there."""
        if not (marker.is_file() and dest.is_dir()):
            return None
        try:
            info = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("ignoring unreadable clone marker %s (%s); cloning again", marker, e)
            return None
        if info.get("url") != url or info.get("sparse") != self.sparse or not info.get("commit"):
            return None
        return info["commit"]

    def clone(self, url: str, dest: Path) -> str:
        """Clone url into dest (via a temporary folder renamed into place) and return HEAD's
        commit. Raises GitError when git fails or the attempt exceeds clone_timeout."""
        deadline = time.monotonic() + self.clone_timeout
        left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
        tmp = dest.with_name(dest.name + ".partial")
        for stale in (tmp, dest):  # leftovers of a killed run; only this task owns this URL
            if stale.exists():
                shutil.rmtree(stale, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        args = ["clone", "--depth", "1", "--no-tags", "--single-branch", "--quiet"]
        if self.sparse:
            args += ["--filter=blob:none", "--no-checkout"]
        try:
            run_git([*args, "--", url, str(tmp)], timeout=left())
            if self.sparse:
                (tmp / ".git" / "info").mkdir(parents=True, exist_ok=True)
                patterns = "\n".join(SPARSE_PATTERNS) + "\n"
                (tmp / ".git" / "info" / "sparse-checkout").write_text(patterns)
                run_git(["config", "core.sparseCheckout", "true"], cwd=tmp, timeout=left())
                # the checkout fetches just the blobs the patterns select
                run_git(["checkout", "--quiet"], cwd=tmp, timeout=left())
            commit = run_git(["rev-parse", "HEAD"], cwd=tmp, timeout=left())
            os.replace(tmp, dest)
        except (GitError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise e if isinstance(e, GitError) else GitError(f"cannot set up clone in {tmp}: {e}")
        return commit


# --- reading the working tree ----------------------------------------------------------------

def list_python_files(root: Path, suffix: str = ".py") -> list[str]:
    """Relative '/' paths of every *.py entry of a working tree, sorted, outside .git/. Symlinks
    are listed (read_file decides about them) but symlinked folders are not descended."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
        rel_dir = Path(dirpath).relative_to(root)
        found += [(rel_dir / n).as_posix() for n in filenames if n.endswith(suffix)]
    return sorted(found)


def _symlink_problem(path: Path, real_root: str) -> str | None:
    """Why a symlink must not be read, or None when it resolves to a file inside the repo."""
    if not _inside(os.path.realpath(path), real_root):
        return "symlink_outside_repo"  # never follow a link out of the clone, even a dangling one
    try:
        os.path.realpath(path, strict=True)
    except OSError as e:
        return "symlink_loop" if e.errno == errno.ELOOP else "broken_symlink"
    return None


def read_file(root: Path, rel: str, max_read_bytes: int) -> RawFile:
    """One file of a working tree as a RawFile (source, path and data/error filled in)."""
    path = root / rel
    rec = RawFile(source="git", repo_name="", path=rel, data=None)
    if path.is_symlink():
        rec.error = _symlink_problem(path, os.path.realpath(root))
        if rec.error:
            return rec
    return read_bounded(rec, path, max_read_bytes)

