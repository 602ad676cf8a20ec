"""The git source against real local repositories cloned through file:// URLs."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from codegpt.errors import CodegptError, SourceError
from data_prep.sources import base
from data_prep.sources import git as gitmod
from data_prep.sources.git import (GitSource, clone_dir_name, detect_license, list_python_files,
                                   parse_repo_name)

HAVE_GIT = subprocess.run(["git", "--version"], capture_output=True).returncode == 0
pytestmark = pytest.mark.skipif(not HAVE_GIT, reason="git is not installed")

MIT = """MIT License

Copyright (c) 2020 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction...

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""
APACHE = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION
"""
BSD_2 = """Copyright (c) 2019, Someone
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice.
2. Redistributions in binary form must reproduce the above copyright notice.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
"""
BSD_3 = BSD_2.replace("THIS SOFTWARE", """3. Neither the name of the copyright holder nor the
   names of its contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE""")
GPL_3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 ... the GNU Affero General Public License ...
"""
GPL_2 = """		    GNU GENERAL PUBLIC LICENSE
		       Version 2, June 1991
"""
LGPL_21 = """GNU LESSER GENERAL PUBLIC LICENSE
Version 2.1, February 1999
... the GNU General Public License ...
"""
LGPL_3 = """GNU LESSER GENERAL PUBLIC LICENSE
   Version 3, 29 June 2007
 This version of the GNU Lesser General Public License incorporates the terms and conditions
 of version 3 of the GNU General Public License
"""
AGPL = """GNU AFFERO GENERAL PUBLIC LICENSE
 Version 3, 19 November 2007 ... the GNU General Public License ..."""
ISC = """ISC License
Copyright (c) 2004-2010 by Someone
Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies.
"""
ZERO_BSD = """Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted.

THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
"""
MPL = """Mozilla Public License Version 2.0
==================================
1. Definitions
"""
UNLICENSE = """This is free and unencumbered software released into the public domain.

Anyone is free to copy, modify, publish, use, compile, sell, or
distribute this software"""


# --- helpers ---------------------------------------------------------------------------------

def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(base: Path, name: str, files: dict[str, str], license_text: str | None = MIT,
              symlinks: dict[str, str] | None = None) -> tuple[str, str]:
    """A committed repository at base/owner/name; returns (file:// URL, commit)."""
    root = base / "owner" / name
    root.mkdir(parents=True)
    git("init", "-q", cwd=root)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if license_text is not None:
        (root / "LICENSE").write_text(license_text)
    for link, target in (symlinks or {}).items():
        os.symlink(target, root / link)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "init", cwd=root)
    return root.as_uri(), git("rev-parse", "HEAD", cwd=root)


@pytest.fixture
def no_sleep():
    calls = []
    return calls, calls.append


# --- license detection -----------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    (MIT, "mit"), (APACHE, "apache-2.0"), (BSD_2, "bsd-2-clause"), (BSD_3, "bsd-3-clause"),
    (GPL_3, "gpl-3.0"), (GPL_2, "gpl-2.0"), (LGPL_21, "lgpl-2.1"), (LGPL_3, "lgpl-3.0"),
    (AGPL, "agpl-3.0"), (ISC, "isc"), (ZERO_BSD, "0bsd"), (MPL, "mpl-2.0"),
    (UNLICENSE, "unlicense"), ("All rights reserved. Do not copy.", None), ("", None),
    ("Apache License\nVersion 1.1", None), ("Licensed under the Apache License 2.0", "apache-2.0"),
])
def test_detect_license(text, expected):
    assert detect_license(text) == expected


def test_detect_license_ignores_wrapping_comments_and_later_notices():
    wrapped = ("# Permission is hereby granted, free of charge,\n"
               "#   to any person\n# obtaining a copy")
    assert detect_license(wrapped) == "mit"
    # an Apache LICENSE followed by third-party MIT notices is Apache
    assert detect_license(APACHE + "\n\nThird party:\n" + MIT) == "apache-2.0"


def test_parse_repo_name():
    assert parse_repo_name("https://github.com/psf/requests.git") == "psf/requests"
    assert parse_repo_name("https://github.com/psf/requests/") == "psf/requests"
    assert parse_repo_name("git@github.com:pallets/flask.git") == "pallets/flask"
    assert parse_repo_name("ssh://git@host:22/a/b/c.git") == "b/c"
    assert parse_repo_name("file:///srv/mirrors/owner/name") == "owner/name"
    assert parse_repo_name("relative/dir/owner/name") == "owner/name"
    assert clone_dir_name("https://github.com/a/b") != clone_dir_name("https://gitlab.com/a/b")
    assert clone_dir_name("https://github.com/a/b") == clone_dir_name("https://github.com/a/b")


# --- cloning and reading ---------------------------------------------------------------------

def test_files_with_commit_license_and_stars(tmp_path, no_sleep):
    files = {"pkg/__init__.py": "", "pkg/mod.py": "x = 1\n", "setup.py": "print(2)\n",
             "README.md": "# hi\n", "data/big.bin": "0" * 5000}
    url, commit = make_repo(tmp_path / "src", "proj", files)
    src = GitSource(urls=[{"url": url, "stars": 42}], cache_dir=str(tmp_path / "cache"),
                    sleep=no_sleep[1])
    recs = list(src.iter_files())
    assert [r.path for r in recs] == ["pkg/__init__.py", "pkg/mod.py", "setup.py"]
    assert all(r.error is None and r.source == "git" and r.repo_name == "owner/proj"
               and r.commit == commit and r.license == "mit" and r.stars == 42 for r in recs)
    assert recs[1].data == b"x = 1\n" and recs[1].extra["size"] == 6
    # sparse checkout: the non-Python data file never reached the working tree
    clone = src.clone_path(url)
    assert not (clone / "data" / "big.bin").exists() and (clone / "LICENSE").exists()
    # a full checkout reads the same files
    full = GitSource(urls=[url], cache_dir=str(tmp_path / "cache2"), sparse=False)
    assert [(r.path, r.data) for r in full.iter_files()] == [(r.path, r.data) for r in recs]


@pytest.mark.parametrize("text,lic", [(APACHE, "apache-2.0"), (BSD_3, "bsd-3-clause"),
                                      (BSD_2, "bsd-2-clause")])
def test_permissive_repos_are_read(tmp_path, text, lic):
    url, _ = make_repo(tmp_path / "src", "p", {"a.py": "a = 1\n"}, license_text=text)
    recs = list(GitSource(urls=[url], cache_dir=str(tmp_path / "cache")).iter_files())
    assert [(r.path, r.license, r.error) for r in recs] == [("a.py", lic, None)]


def test_gpl_and_unlicensed_repos_yield_one_error_record(tmp_path):
    gpl, gpl_commit = make_repo(tmp_path / "src", "gpl", {"a.py": "", "b.py": ""}, GPL_3)
    none, _ = make_repo(tmp_path / "src", "none", {"a.py": ""}, license_text=None)
    recs = list(GitSource(urls=[gpl, none], cache_dir=str(tmp_path / "cache")).iter_files())
    by_repo = {r.repo_name: r for r in recs}
    assert len(recs) == 2
    assert by_repo["owner/gpl"].error == "license_not_allowed:gpl-3.0"
    assert by_repo["owner/gpl"].path == "" and by_repo["owner/gpl"].data is None
    assert by_repo["owner/gpl"].commit == gpl_commit
    assert by_repo["owner/none"].error == "license_unknown"
    # a configured allowlist can take GPL in, and "unknown" accepts repositories without one
    src = GitSource(urls=[gpl, none], cache_dir=str(tmp_path / "cache"),
                    licenses=["gpl-3.0", "unknown"])
    assert sorted((r.repo_name, r.path, r.error) for r in src.iter_files()) == [
        ("owner/gpl", "a.py", None), ("owner/gpl", "b.py", None), ("owner/none", "a.py", None)]


def test_license_hint_outside_allowlist_skips_the_clone(tmp_path, monkeypatch):
    monkeypatch.setattr(gitmod, "run_git", lambda *a, **k: pytest.fail("git must not run"))
    src = GitSource(urls=[{"url": "https://example.invalid/o/r", "license": "GPL-3.0"}],
                    cache_dir=str(tmp_path / "cache"))
    [rec] = list(src.iter_files())
    assert (rec.repo_name, rec.license) == ("o/r", "gpl-3.0")
    assert rec.error == "license_not_allowed:gpl-3.0"


def test_missing_repo_is_a_clone_failed_record_after_retries(tmp_path, no_sleep, caplog):
    calls, sleep = no_sleep
    good, _ = make_repo(tmp_path / "src", "good", {"a.py": "ok\n"})
    missing = (tmp_path / "src" / "owner" / "missing").as_uri()
    src = GitSource(urls=[missing, good], cache_dir=str(tmp_path / "cache"), retries=2,
                    retry_backoff=1.5, sleep=sleep)
    recs = list(src.iter_files())
    failed = [r for r in recs if r.repo_name == "owner/missing"]
    assert [(r.path, r.error, r.data) for r in failed] == [("", "clone_failed", None)]
    assert [r.path for r in recs if r.repo_name == "owner/good"] == ["a.py"]
    assert calls == [1.5, 3.0]  # exponential back-off between the three attempts
    assert "fatal:" in caplog.text  # git's own stderr is logged
    assert not list((tmp_path / "cache").glob("*missing*"))  # no half clone left behind


def test_existing_clone_is_reused(tmp_path, monkeypatch):
    url, commit = make_repo(tmp_path / "src", "proj", {"a.py": "a\n"})
    cache = tmp_path / "cache"

    def read() -> list:
        src = GitSource(urls=[url], cache_dir=str(cache))
        return [(r.path, r.data, r.commit) for r in src.iter_files()]

    first = read()
    marker = next(cache.glob("*.clone.json"))
    mtime = marker.stat().st_mtime_ns
    calls = []
    real = gitmod.run_git
    monkeypatch.setattr(gitmod, "run_git", lambda args, **k: calls.append(args) or real(args, **k))
    second = read()
    assert second == first and first[0][2] == commit
    assert calls == [] and marker.stat().st_mtime_ns == mtime
    # a clone without its marker (a run killed mid-clone) is not trusted: it is cloned again
    marker.unlink()
    third = read()
    assert third == first and any(a[0] == "clone" for a in calls)


def test_symlinks(tmp_path):
    outside = tmp_path / "secret.py"
    outside.write_text("SECRET = 1\n")
    links = {"broken.py": "nowhere.py", "loop1.py": "loop2.py", "loop2.py": "loop1.py",
             "inside.py": "pkg/real.py", "outside.py": str(outside),
             "outside_rel.py": "../../../secret.py", "pkgdir": "pkg"}
    url, _ = make_repo(tmp_path / "src", "links", {"pkg/real.py": "real\n"}, symlinks=links)
    src = GitSource(urls=[url], cache_dir=str(tmp_path / "cache"), sparse=False)
    got = {r.path: (r.error, r.data) for r in src.iter_files()}
    assert got == {
        "broken.py": ("broken_symlink", None),
        "inside.py": (None, b"real\n"),
        "loop1.py": ("symlink_loop", None),
        "loop2.py": ("symlink_loop", None),
        "outside.py": ("symlink_outside_repo", None),
        "outside_rel.py": ("symlink_outside_repo", None),
        "pkg/real.py": (None, b"real\n"),  # the symlinked folder pkgdir/ is not walked
    }


def test_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "locked.py").write_text("x")

    def deny(*args, **kwargs):  # a mode check would not stop root, so refuse the open itself
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(base, "open", deny, raising=False)
    rec = gitmod.read_file(tmp_path, "locked.py", 100)
    assert (rec.error, rec.data) == ("unreadable", None)


def test_list_python_files_skips_git_dir(tmp_path):
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / ".git" / "hooks" / "x.py").write_text("")
    (tmp_path / "b" / "c").mkdir(parents=True)
    for rel in ("z.py", "b/c/d.py", "b/a.py", "b/notes.txt"):
        (tmp_path / rel).write_text("")
    assert list_python_files(tmp_path) == ["b/a.py", "b/c/d.py", "z.py"]


def test_rank_split_covers_every_url_once(tmp_path):
    urls = [make_repo(tmp_path / "src", f"r{i}", {f"m{i}.py": f"v = {i}\n"})[0] for i in range(5)]
    cache = str(tmp_path / "cache")

    def share(order: list[str], rank: int, world: int) -> list[tuple[str, str]]:
        src = GitSource(urls=order, cache_dir=cache)
        return [(r.repo_name, r.path) for r in src.iter_files(rank, world)]

    everything = sorted(share(urls, 0, 1))
    assert len(everything) == 5
    for world in (2, 3):
        shares = [share(list(reversed(urls)), rank, world) for rank in range(world)]
        flat = [x for s in shares for x in s]
        assert sorted(flat) == everything and len(set(flat)) == len(flat)
        assert shares[0] == share(urls, 0, world)  # deterministic, whatever the config order


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="urls"):
        GitSource(cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown keys"):
        GitSource(urls=[{"url": "https://h/o/r", "stars": 1, "licence": "mit"}])


def test_urls_file_reads_json_lines_and_plain_urls(tmp_path):
    f = tmp_path / "repos.jsonl"
    f.write_text('# discovered\n{"url": "https://h/a/b", "stars": 5, "license": "mit"}\n'
                 "https://h/c/d\n\n")
    src = GitSource(urls=["https://h/c/d"], urls_file=str(f), cache_dir=str(tmp_path))
    assert [(s.repo_name, s.stars, s.license_hint) for s in src.repos] == [
        ("a/b", 5, "mit"), ("c/d", None, None)]


def test_a_failing_git_is_a_codegpt_error(tmp_path):
    """GitError belongs to the error base the CLI prints as one line `error: ...`."""
    with pytest.raises(gitmod.GitError, match="exited with") as e:
        gitmod.run_git(["rev-parse", "HEAD"], cwd=tmp_path)  # not a repository
    assert isinstance(e.value, SourceError) and isinstance(e.value, CodegptError)
    assert e.value.exit_code == 2
