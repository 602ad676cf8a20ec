"""Finding Python repositories through GitHub's search API, to feed the git source.

One search query returns at most 1,000 results, so the creation-date range is split in halves
whenever a query reports more, down to single days. Rate limits are honoured (Retry-After,
X-RateLimit-Reset, exponential back-off for secondary limits), transient failures are retried a
bounded number of times and then recorded instead of ending the discovery, and progress is saved
to a JSON state file after every page so a restarted discovery skips what it has done.

Only the standard library is used for HTTP. ``GITHUB_TOKEN`` from the environment, when set,
raises the limits (30 instead of 10 search requests a minute).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from codegpt.errors import SourceError
from codegpt.io import atomic_write_json, atomic_write_text
from data_prep.sources.base import RawFile, Source
from data_prep.sources.git import GitSource

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.github.com"
RESULT_CAP = 1000          # the search API never returns more than this for one query
STATE_VERSION = 1
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class GitHubError(SourceError):
    """A discovery that cannot go on: bad credentials, a state file of another query, ..."""


class RequestFailed(Exception):
    """One request that still failed after its retries; the window is recorded as failed."""


# --- small pure helpers ----------------------------------------------------------------------

def parse_date(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as e:
        raise ValueError(f"{what} must be a date like 2015-01-31, got {value!r}") from e


def split_window(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
    """Two halves of an inclusive date window, earlier first; a one-day window cannot split."""
    if start >= end:
        return [(start, end)]
    mid = start + (end - start) // 2
    return [(start, mid), (mid + dt.timedelta(days=1), end)]


def window_key(start: dt.date | str, end: dt.date | str) -> str:
    return f"{start}..{end}"


def repo_record(item: dict) -> dict:
    """The fields we keep of one search result."""
    lic = (item.get("license") or {}).get("spdx_id")
    lic = lic.lower() if isinstance(lic, str) and lic.upper() != "NOASSERTION" else None
    return {"url": item["clone_url"], "repo_name": item["full_name"],
            "stars": int(item.get("stargazers_count") or 0), "license": lic}


def write_repo_list(path: str | Path, repos: list[dict]) -> None:
    """Write discovered repositories as JSON lines, atomically (the git source reads this)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in repos))


def read_repo_list(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def git_source_from_repos(repos: list[dict] | str | Path, **git_kwargs: Any) -> GitSource:
    """A GitSource over discovered repositories (a list, or the path of a written list), keeping
    their stars and GitHub's license as a hint."""
    if isinstance(repos, (str, Path)):
        repos = read_repo_list(repos)
    return GitSource(urls=[{k: r.get(k) for k in ("url", "repo_name", "stars", "license")}
                           for r in repos], **git_kwargs)


# --- the search client -----------------------------------------------------------------------

class GitHubSearch:
    """Repositories matching ``language:L stars:>=N created:A..B``, found window by window."""

    def __init__(self, min_stars: int = 100, created_from: str | dt.date = "2008-01-01",
                 created_to: str | dt.date | None = None, language: str = "python",
                 api_base: str = DEFAULT_API, state_path: str | Path | None = None,
                 token: str | None = None, per_page: int = 100, max_retries: int = 5,
                 backoff: float = 2.0, secondary_backoff: float = 60.0, max_backoff: float = 900.0,
                 max_rate_limit_waits: int = 50, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.time):
        """created_to None means today (UTC, fixed when the state file is first written);
        token None reads GITHUB_TOKEN; max_retries bounds the retries of a 5xx or connection
        error, max_rate_limit_waits the waits on rate limits per request; sleep and now are
        injectable so tests neither wait nor depend on the clock."""
        self.min_stars, self.language = int(min_stars), language
        self.created_from = parse_date(created_from, "created_from")
        to = None if created_to is None else parse_date(created_to, "created_to")
        self.created_to_raw = None if to is None else str(to)
        if to is not None and to < self.created_from:
            raise ValueError(f"created_to ({created_to}) is before created_from ({created_from})")
        self.api_base = api_base.rstrip("/")
        self.state_path = Path(state_path) if state_path else None
        self.token = token if token is not None else os.environ.get("GITHUB_TOKEN") or None
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page must be between 1 and 100 (the API's limit), "
                             f"got {per_page}")
        self.per_page, self.max_retries, self.timeout = per_page, max_retries, timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self.secondary_backoff = secondary_backoff
        self.max_rate_limit_waits = max_rate_limit_waits
        self.sleep, self.now = sleep, now
        self._resume_at: float | None = None  # a reset time to wait for before the next request
        host = urllib.parse.urlparse(self.api_base).hostname or ""
        # a local test or mirror server must never be reached through a configured proxy
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- state --

    def query_config(self) -> dict:
        """What identifies this discovery; a state file written for another one is refused."""
        return {"language": self.language, "min_stars": self.min_stars,
                "created_from": str(self.created_from), "created_to": self.created_to_raw,
                "api_base": self.api_base}

    def new_state(self) -> dict:
        end = self.created_to_raw or str(dt.datetime.now(dt.timezone.utc).date())
        return {"version": STATE_VERSION, "config": self.query_config(),
                "range": [str(self.created_from), end],
                "pending": [[str(self.created_from), end]], "done": [], "pages": {},
                "failed": [], "truncated": [], "repos": {}}

    def load_state(self) -> dict:
        """The saved progress, or a fresh start; windows that failed last time are queued again."""
        if not self.state_path or not self.state_path.exists():
            return self.new_state()
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GitHubError(f"cannot read discovery state {self.state_path} ({e}); delete it to "
                              "start the discovery over") from e
        if state.get("version") != STATE_VERSION or state.get("config") != self.query_config():
            raise GitHubError(f"discovery state {self.state_path} belongs to another query "
                              f"({state.get('config')}); delete it or use another state_path")
        for f in state["failed"]:
            if f["window"] not in state["pending"]:
                state["pending"].insert(0, f["window"])  # bottom of the stack: retried last
        state["failed"] = []
        log.info("resuming discovery: %d windows done, %d pending, %d repositories so far",
                 len(state["done"]), len(state["pending"]), len(state["repos"]))
        return state

    def save_state(self, state: dict) -> None:
        if self.state_path:
            atomic_write_json(self.state_path, state)

    # -- the walk over windows --

    def run(self) -> list[dict]:
        """Discover every repository of the query; sorted by repo_name, deduplicated."""
        state = self.load_state()
        while state["pending"]:
            start, end = state["pending"][-1]  # a stack: halves of a split window come next
            try:
                self.search_window(state, parse_date(start, "window"), parse_date(end, "window"))
            except RequestFailed as e:
                key = window_key(start, end)
                log.error("giving up on window %s for now: %s", key, e)
                state["failed"].append({"window": [start, end], "error": str(e),
                                        "page": state["pages"].get(key, 0) + 1})
                state["pending"].pop()
                self.save_state(state)
        if state["failed"]:
            log.warning("%d date windows failed (see %s); running the discovery again retries "
                        "only those", len(state["failed"]), self.state_path or "the log")
        return sorted(state["repos"].values(), key=lambda r: r["repo_name"])

    def search_window(self, state: dict, start: dt.date, end: dt.date) -> None:
        """Fetch a window's pages, or replace it by its halves when it holds too many results."""
        key = window_key(start, end)
        page = state["pages"].get(key, 0) + 1
        while True:
            body = self.fetch(start, end, page)
            total = int(body.get("total_count", 0))
            if page == 1 and total > RESULT_CAP and start < end:
                log.info("window %s has %d results (> %d): splitting it", key, total, RESULT_CAP)
                state["pending"].pop()
                halves = reversed(split_window(start, end))  # the earlier half on top
                state["pending"] += [[str(a), str(b)] for a, b in halves]
                self.save_state(state)
                return
            if page == 1 and total > RESULT_CAP and key not in state["truncated"]:
                log.warning("one day (%s) has %d results; only the top %d by stars are reachable",
                            start, total, RESULT_CAP)
                state["truncated"].append(key)
            if body.get("incomplete_results"):
                log.warning("GitHub reported incomplete results for %s page %d", key, page)
            items = body.get("items") or []
            for item in items:
                rec = repo_record(item)
                state["repos"][rec["repo_name"]] = rec
            last = len(items) < self.per_page or page * self.per_page >= min(total, RESULT_CAP)
            if last:
                state["pending"].pop()
                state["pages"].pop(key, None)
                state["done"].append([str(start), str(end)])
            else:
                state["pages"][key] = page
            self.save_state(state)
            if last:
                return
            page += 1

    # -- HTTP --

    def search_url(self, start: dt.date, end: dt.date, page: int) -> str:
        q = f"language:{self.language} stars:>={self.min_stars} created:{start}..{end}"
        params = {"q": q, "sort": "stars", "order": "desc", "per_page": self.per_page, "page": page}
        return f"{self.api_base}/search/repositories?{urllib.parse.urlencode(params)}"

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
             "User-Agent": "codegpt-data-prep"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def fetch(self, start: dt.date, end: dt.date, page: int) -> dict:
        """One page of results. Waits out rate limits and retries transient failures, a bounded
        number of times; raises RequestFailed when they run out, GitHubError on bad credentials."""
        url = self.search_url(start, end, page)
        failures = waits = 0
        while True:
            self._wait_for_reset()
            try:
                status, headers, body = self._get(url)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                # refused, reset, timed out, a truncated body: worth another try
                status, headers, body = None, {}, {"message": str(getattr(e, "reason", e))}
            if status == 200:
                self._note_limits(headers)
                return body
            wait = self.rate_limit_wait(status, headers, body, waits)
            if wait is not None:
                waits += 1
                if waits > self.max_rate_limit_waits:
                    raise RequestFailed(f"still rate limited after {waits - 1} waits ({url})")
                log.warning("rate limited (HTTP %s): waiting %.0fs", status, wait)
                self.sleep(wait)
                continue
            if status == 401:
                raise GitHubError("GitHub rejected the credentials (401 Bad credentials): check "
                                  "GITHUB_TOKEN, or unset it to search without one")
            if status is None or status >= 500:
                failures += 1
                if failures > self.max_retries:
                    raise RequestFailed(f"HTTP {status or 'connection error'} after "
                                        f"{self.max_retries} retries: {body.get('message')}")
                delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
                log.warning("request failed (%s: %s); retry %d of %d in %.0fs",
                            status or "connection error", body.get("message"), failures,
                            self.max_retries, delay)
                self.sleep(delay)
                continue
            raise RequestFailed(f"HTTP {status}: {body.get('message')} ({url})")  # 403/404/422...

    def rate_limit_wait(self, status: int | None, headers: dict, body: dict,
                        waits: int) -> float | None:
        """Seconds to wait when a response is a rate limit, else None. Retry-After wins; then an
        exhausted primary limit waits until its reset; secondary limits and bare 429s back off
        exponentially, as GitHub asks."""
        if status not in (403, 429):
            return None
        if headers.get("retry-after"):
            try:
                return max(0.0, float(headers["retry-after"]))
            except ValueError:
                pass
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
            return self._until(headers["x-ratelimit-reset"])
        message = str(body.get("message", "")).lower()
        if status == 429 or "secondary rate limit" in message or "abuse" in message:
            return min(self.max_backoff, self.secondary_backoff * 2 ** waits)
        return None  # a plain 403 (forbidden): not something waiting fixes

    def _until(self, reset: str) -> float:
        try:
            return max(0.0, float(reset) - self.now()) + 1.0  # one second past the reset
        except ValueError:
            return self.secondary_backoff

    def _note_limits(self, headers: dict) -> None:
        """After a good response that used up the limit, wait for the reset before the next one."""
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
            self._resume_at = self.now() + self._until(headers["x-ratelimit-reset"])

    def _wait_for_reset(self) -> None:
        if self._resume_at is not None:
            wait = self._resume_at - self.now()
            self._resume_at = None
            if wait > 0:
                log.info("rate limit used up: waiting %.0fs for its reset", wait)
                self.sleep(wait)

    def _get(self, url: str) -> tuple[int, dict, dict]:
        """(status, lower-case headers, JSON body) of a GET; HTTP errors are returned, not
        raised, so one place decides what each status means."""
        req = urllib.request.Request(url, headers=self.headers())
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, _lower(resp.headers), _json(resp.read())
        except urllib.error.HTTPError as e:
            with contextlib.closing(e):
                return e.code, _lower(e.headers), _json(e.read())


def _lower(headers: Any) -> dict:
    return {k.lower(): v for k, v in (headers or {}).items()}


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"message": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"message": str(body)[:200]}


# --- the source: discovery, then the git source ----------------------------------------------

class GitHubSource(Source):
    """Python repositories found by GitHub search, read like the git source.

    The discovered list is written once (``<cache_dir>/github-<query hash>.jsonl``) and is the one
    truth every task shares: the first task to get the lock discovers, the others wait and read
    it, so all tasks shard the same list. Delete that file to discover again (the state file
    beside it keeps completed windows, so only failed or new ones are requested).
    """

    name = "github"

    def __init__(self, min_stars: int = 100, created_from: str = "2008-01-01",
                 created_to: str | None = None, language: str = "python",
                 api_base: str = DEFAULT_API, max_repos: int | None = None,
                 cache_dir: str = "runs/data/repos", licenses: list[str] | None = None,
                 clone_timeout: float = 600.0, retries: int = 2, sparse: bool = True,
                 max_read_bytes: int = 1_000_000, sleep: Callable[[float], None] = time.sleep):
        """Search options as for GitHubSearch; max_repos keeps only the most-starred that many;
        the remaining options are the git source's."""
        self.search = GitHubSearch(min_stars=min_stars, created_from=created_from,
                                   created_to=created_to, language=language, api_base=api_base,
                                   sleep=sleep)
        self.max_repos = max_repos
        self.cache_dir = Path(cache_dir)
        digest = hashlib.sha1(json.dumps({**self.search.query_config(), "max_repos": max_repos},
                                         sort_keys=True).encode()).hexdigest()[:12]
        self.list_path = self.cache_dir / f"github-{digest}.jsonl"
        self.search.state_path = self.cache_dir / f"github-{digest}.state.json"
        self.git_kwargs = dict(cache_dir=cache_dir, licenses=licenses, clone_timeout=clone_timeout,
                               retries=retries, sparse=sparse, max_read_bytes=max_read_bytes,
                               sleep=sleep)

    def repos(self) -> list[dict]:
        """The discovered list: read if written, else discovered (once across tasks) and written."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.list_path.with_name(self.list_path.name + ".lock")):
            if self.list_path.exists():
                return read_repo_list(self.list_path)
            repos = self.search.run()
            if self.max_repos is not None:
                top = sorted(repos, key=lambda r: (-r["stars"], r["repo_name"]))[:self.max_repos]
                repos = sorted(top, key=lambda r: r["repo_name"])
            write_repo_list(self.list_path, repos)
            log.info("discovered %d repositories; list written to %s", len(repos), self.list_path)
            return repos

    def iter_files(self, rank: int = 0, world_size: int = 1) -> Iterator[RawFile]:
        repos = self.repos()
        if not repos:
            log.warning("GitHub search found no repositories for %s", self.search.query_config())
            return
        for rec in git_source_from_repos(repos, **self.git_kwargs).iter_files(rank, world_size):
            rec.source = "github"
            yield rec


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held across processes on this machine."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
