"""GitHub discovery against a local fake of the search API (127.0.0.1 only, never the network)."""

import datetime as dt
import json
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from data_prep.sources.github import (GitHubError, GitHubSearch, GitHubSource,
                                      git_source_from_repos, read_repo_list, split_window,
                                      write_repo_list)

D = dt.date


class FakeGitHub:
    """Answers /search/repositories like GitHub from a list of repositories, with scripted
    responses (rate limits, errors) served first for chosen (window, page) requests."""

    def __init__(self):
        self.repos: list[dict] = []
        self.script: dict[tuple[str, int], list[tuple[int, dict, dict]]] = {}
        self.requests: list[tuple[str, int]] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()

    def add(self, day: D, count: int, stars: int = 500, prefix: str = "o",
            license: str | None = "MIT", clone_url=None):
        for i in range(count):
            name = f"{prefix}/r{day:%Y%m%d}-{i:04d}"
            self.repos.append({"full_name": name, "created": day, "stargazers_count": stars + i,
                               "clone_url": clone_url(name) if clone_url
                               else f"https://h/{name}.git",
                               "license": {"spdx_id": license} if license else None})

    def answer(self, path: str, query: dict, headers: dict) -> tuple[int, dict, dict]:
        if path != "/search/repositories":
            return 404, {}, {"message": "Not Found"}
        terms = dict(t.split(":", 1) for t in query["q"][0].split())
        start, end = (D.fromisoformat(x) for x in terms["created"].split(".."))
        min_stars = int(terms["stars"].removeprefix(">="))
        page, per_page = int(query["page"][0]), int(query["per_page"][0])
        key = (f"{start}..{end}", page)
        with self.lock:
            self.requests.append(key)
            self.headers.append(headers)
            if self.script.get(key):
                return self.script[key].pop(0)
        if page * per_page > 1000 + per_page - 1:
            return 422, {}, {"message": "Only the first 1000 search results are available"}
        hits = sorted((r for r in self.repos if start <= r["created"] <= end
                       and r["stargazers_count"] >= min_stars),
                      key=lambda r: -r["stargazers_count"])
        items = [{k: v for k, v in r.items() if k != "created"}
                 for r in hits[(page - 1) * per_page:page * per_page]]
        return 200, {}, {"total_count": len(hits), "incomplete_results": False, "items": items}


@pytest.fixture
def fake():
    gh = FakeGitHub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            status, headers, body = gh.answer(url.path, parse_qs(url.query), dict(self.headers))
            raw = json.dumps(body).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    gh.api = f"http://127.0.0.1:{server.server_address[1]}"
    yield gh
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)


def search(fake, sleeps=None, **kw) -> GitHubSearch:
    opts = dict(min_stars=100, created_from="2020-01-01", created_to="2020-01-31",
                api_base=fake.api, now=lambda: 1000.0, timeout=5, max_retries=2,
                sleep=sleeps.append if sleeps is not None else lambda s: None)
    return GitHubSearch(**{**opts, **kw})


WINDOW = "2020-01-01..2020-01-31"


# --- tests -----------------------------------------------------------------------------------

def test_split_window():
    assert split_window(D(2020, 1, 1), D(2020, 1, 4)) == [(D(2020, 1, 1), D(2020, 1, 2)),
                                                          (D(2020, 1, 3), D(2020, 1, 4))]
    assert split_window(D(2020, 1, 1), D(2020, 1, 2)) == [(D(2020, 1, 1), D(2020, 1, 1)),
                                                          (D(2020, 1, 2), D(2020, 1, 2))]
    assert split_window(D(2020, 1, 5), D(2020, 1, 5)) == [(D(2020, 1, 5), D(2020, 1, 5))]


def test_pagination_and_records(fake, tmp_path):
    fake.add(D(2020, 1, 10), 150)
    fake.add(D(2020, 1, 11), 2, prefix="gpl", license="GPL-3.0")
    fake.add(D(2020, 1, 12), 1, prefix="other", license="NOASSERTION")
    fake.add(D(2020, 1, 12), 1, prefix="none", license=None)
    fake.add(D(2020, 1, 13), 3, stars=10)  # below min_stars
    repos = search(fake).run()
    assert fake.requests == [(WINDOW, 1), (WINDOW, 2)]
    names = [r["repo_name"] for r in repos]
    assert len(repos) == 154 and names == sorted(names)
    by = {r["repo_name"]: r for r in repos}
    assert by["o/r20200110-0007"] == {"url": "https://h/o/r20200110-0007.git", "stars": 507,
                                      "repo_name": "o/r20200110-0007", "license": "mit"}
    assert by["gpl/r20200111-0000"]["license"] == "gpl-3.0"
    assert by["other/r20200112-0000"]["license"] is None  # NOASSERTION: GitHub could not tell
    assert by["none/r20200112-0000"]["license"] is None
    out = tmp_path / "repos.jsonl"
    write_repo_list(out, repos)
    assert read_repo_list(out) == repos


def test_window_over_1000_results_is_split(fake):
    for day in range(1, 5):  # 1,200 results in four days: too many for one query
        fake.add(D(2020, 1, day), 300, prefix=f"d{day}")
    repos = search(fake, created_to="2020-01-04").run()
    assert len(repos) == 1200
    whole = "2020-01-01..2020-01-04"
    assert fake.requests[0] == (whole, 1) and (whole, 2) not in fake.requests
    assert [k for k in fake.requests if k[1] == 1] == [
        (whole, 1), ("2020-01-01..2020-01-02", 1), ("2020-01-03..2020-01-04", 1)]
    assert len(fake.requests) == 1 + 6 + 6  # each half: 600 results in 6 pages
    assert len(set(fake.requests)) == len(fake.requests)


def test_a_single_day_over_the_cap_takes_the_first_1000(fake, tmp_path):
    fake.add(D(2020, 1, 5), 1050)
    s = search(fake, created_from="2020-01-05", created_to="2020-01-05",
               state_path=tmp_path / "state.json")
    repos = s.run()
    assert len(repos) == 1000 and len(fake.requests) == 10
    assert min(r["stars"] for r in repos) == 550  # the most-starred 1,000 of 500..1549
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["truncated"] == ["2020-01-05..2020-01-05"]


def test_retry_after_403_and_429(fake):
    fake.add(D(2020, 1, 10), 3)
    fake.script[(WINDOW, 1)] = [(403, {"Retry-After": "7"}, {"message": "rate limited"}),
                                (429, {"Retry-After": "3"}, {"message": "too many"}),
                                (429, {}, {"message": "too many"})]
    sleeps = []
    repos = search(fake, sleeps, secondary_backoff=60).run()
    assert len(repos) == 3
    assert sleeps == [7.0, 3.0, 240.0]  # a bare 429 backs off exponentially (third wait: 60 * 2**2)
    assert fake.requests == [(WINDOW, 1)] * 4


def test_rate_limit_reset(fake):
    fake.add(D(2020, 1, 10), 150)
    limited = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1042"}
    fake.script[(WINDOW, 1)] = [(403, limited, {"message": "API rate limit exceeded"})]
    sleeps = []
    assert len(search(fake, sleeps).run()) == 150
    assert sleeps == [43.0]  # until the reset (now = 1000) plus a second
    # a successful response that used the limit up makes the *next* request wait for the reset
    fake.requests.clear()
    fake.script[(WINDOW, 1)] = []
    orig = fake.answer

    def answer_with_limit(path, query, headers):
        status, h, body = orig(path, query, headers)
        return status, {**h, **limited} if query["page"] == ["1"] else h, body

    fake.answer = answer_with_limit
    sleeps.clear()
    assert len(search(fake, sleeps).run()) == 150
    assert sleeps == [43.0] and fake.requests == [(WINDOW, 1), (WINDOW, 2)]


def test_secondary_rate_limit_backs_off_exponentially(fake):
    fake.add(D(2020, 1, 10), 2)
    secondary = (403, {}, {"message": "You have exceeded a secondary rate limit. Please wait."})
    fake.script[(WINDOW, 1)] = [secondary, secondary, secondary]
    sleeps = []
    assert len(search(fake, sleeps, secondary_backoff=60, max_backoff=200).run()) == 2
    assert sleeps == [60, 120, 200]  # capped at max_backoff


def test_server_error_is_retried_then_recorded(fake, tmp_path):
    fake.add(D(2020, 1, 10), 2)
    fake.script[(WINDOW, 1)] = [(502, {}, {"message": "Bad Gateway"})]
    sleeps = []
    assert len(search(fake, sleeps, backoff=2.0).run()) == 2
    assert sleeps == [2.0]
    # failing for good: bounded retries, the window is recorded as failed, no exception
    fake.requests.clear()
    fake.script[(WINDOW, 1)] = [(503, {}, {"message": "down"})] * 10
    sleeps.clear()
    state = tmp_path / "state.json"
    assert search(fake, sleeps, max_retries=2, state_path=state).run() == []
    assert len(fake.requests) == 3 and sleeps == [2.0, 4.0]
    failed = json.loads(state.read_text())["failed"]
    assert [f["window"] for f in failed] == [["2020-01-01", "2020-01-31"]]
    assert "503" in failed[0]["error"]
    # a restarted discovery retries only the failed window
    fake.requests.clear()
    fake.script[(WINDOW, 1)] = []
    assert len(search(fake, state_path=state).run()) == 2
    assert fake.requests == [(WINDOW, 1)]


def test_connection_errors_are_bounded(tmp_path):
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    s = GitHubSearch(created_from="2020-01-01", created_to="2020-01-02", timeout=2, max_retries=2,
                     api_base=f"http://127.0.0.1:{port}", sleep=sleeps.append,
                     state_path=tmp_path / "st.json")
    assert s.run() == []
    assert len(sleeps) == 2
    [failed] = json.loads((tmp_path / "st.json").read_text())["failed"]
    assert "connection error" in failed["error"]


def test_bad_token_is_a_clear_error(fake, monkeypatch):
    fake.script[(WINDOW, 1)] = [(401, {}, {"message": "Bad credentials"})]
    with pytest.raises(GitHubError, match="GITHUB_TOKEN"):
        search(fake).run()


def test_the_cli_prints_a_github_error_as_one_line(fake, tmp_path, capsys):
    """codegpt prep with a github source that GitHub refuses: `error: ...`, exit 2, no
    traceback (GitHubError is a codegpt.errors.SourceError)."""
    from codegpt.cli import main  # imports torch: only this test pays for it

    fake.script[(WINDOW, 1)] = [(401, {}, {"message": "Bad credentials"})]
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump({"sources": [{
        "type": "github", "created_from": "2020-01-01", "created_to": "2020-01-31",
        "api_base": fake.api, "cache_dir": str(tmp_path / "repos")}]}))
    code = main(["prep", str(config), f"out_dir={tmp_path / 'out'}", "decontam.enabled=false",
                 "executor.tasks=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        "error: GitHub rejected the credentials (401 Bad credentials): check GITHUB_TOKEN, or "
        "unset it to search without one"], err
    assert "Traceback" not in err


def test_token_header(fake, monkeypatch):
    fake.add(D(2020, 1, 10), 1)
    search(fake).run()
    assert "Authorization" not in fake.headers[-1]
    monkeypatch.setenv("GITHUB_TOKEN", "tok123")
    search(fake).run()
    assert fake.headers[-1]["Authorization"] == "Bearer tok123"


def test_resume_after_crash_repeats_no_request(fake, tmp_path, monkeypatch):
    for day in range(1, 5):
        fake.add(D(2020, 1, day), 300, prefix=f"d{day}")
    state = tmp_path / "state.json"
    saves = []
    real_save = GitHubSearch.save_state

    class Crash(Exception):
        pass

    def crashing_save(self, st):
        real_save(self, st)
        saves.append(1)
        if len(saves) == 5:  # after the split and a few pages of the first half
            raise Crash()

    monkeypatch.setattr(GitHubSearch, "save_state", crashing_save)
    with pytest.raises(Crash):
        search(fake, created_to="2020-01-04", state_path=state).run()
    monkeypatch.setattr(GitHubSearch, "save_state", real_save)
    before = list(fake.requests)
    repos = search(fake, created_to="2020-01-04", state_path=state).run()
    assert len(repos) == 1200
    assert len(set(fake.requests)) == len(fake.requests)  # nothing was asked twice
    assert len(before) == 5 and len(fake.requests) == 13
    # a finished discovery asks nothing more
    fake.requests.clear()
    assert search(fake, created_to="2020-01-04", state_path=state).run() == repos
    assert fake.requests == []
    # a state file of another query is refused, not mixed in
    with pytest.raises(GitHubError, match="another query"):
        search(fake, created_to="2020-01-04", min_stars=5, state_path=state).run()


def test_loopback_api_bypasses_a_configured_proxy(fake, monkeypatch):
    with socket.socket() as s:  # a "proxy" on 127.0.0.1 that refuses: using it would fail
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("no_proxy", "")
    fake.add(D(2020, 1, 10), 1)
    assert len(search(fake).run()) == 1


# --- discovery feeding the git source --------------------------------------------------------

def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode,
                    reason="git is not installed")
def test_github_source_discovers_then_reads_repos(fake, tmp_path):
    repos_dir = tmp_path / "remote"

    def clone_url(name: str) -> str:
        root = repos_dir / name
        root.mkdir(parents=True)
        (root / "main.py").write_text(f"# {name}\n")
        (root / "LICENSE").write_text("Permission is hereby granted, free of charge, to any "
                                      "person obtaining a copy")
        _git("init", "-q", cwd=root)
        _git("add", "-A", cwd=root)
        _git("commit", "-q", "-m", "x", cwd=root)
        return root.as_uri()

    fake.add(D(2020, 1, 10), 3, clone_url=clone_url)
    fake.add(D(2020, 1, 11), 1, prefix="gpl", license="GPL-3.0")  # skipped without a clone
    kw = dict(min_stars=100, created_from="2020-01-01", created_to="2020-01-31", api_base=fake.api,
              cache_dir=str(tmp_path / "cache"), sleep=lambda s: None)
    src = GitHubSource(**kw)
    recs = [r for rank in range(2) for r in src.iter_files(rank, 2)]
    assert sorted((r.repo_name, r.path, r.error) for r in recs) == [
        ("gpl/r20200111-0000", "", "license_not_allowed:gpl-3.0"),
        ("o/r20200110-0000", "main.py", None), ("o/r20200110-0001", "main.py", None),
        ("o/r20200110-0002", "main.py", None)]
    assert all(r.source == "github" and r.stars for r in recs)
    assert len(fake.requests) == 1  # the second task read the written list
    # another source over the same query reuses the list: no request at all
    fake.requests.clear()
    assert len(list(GitHubSource(**kw).iter_files())) == 4 and fake.requests == []
    # max_repos keeps the most-starred ones (a query of its own, so a fresh discovery)
    top = GitHubSource(**kw, max_repos=2).repos()
    assert [(r["repo_name"], r["stars"]) for r in top] == [("o/r20200110-0001", 501),
                                                           ("o/r20200110-0002", 502)]
    # the helper turns a written list into a git source
    listed = GitHubSource(**kw).list_path
    git_src = git_source_from_repos(listed, cache_dir=str(tmp_path / "cache"))
    assert sorted((s.repo_name, s.stars, s.license_hint) for s in git_src.repos) == [
        ("gpl/r20200111-0000", 500, "gpl-3.0"), ("o/r20200110-0000", 500, "mit"),
        ("o/r20200110-0001", 501, "mit"), ("o/r20200110-0002", 502, "mit")]
