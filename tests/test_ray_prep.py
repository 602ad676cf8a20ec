"""Data prep on real Ray clusters: one that `codegpt prep` starts itself, and one started the way
a user starts one (`ray start --head`) that it connects to.

The output on Ray is the local executor's, document for document; a task whose worker process
is SIGKILLed while it runs is run again, and the output is still the local one; no Ray process
outlives a test except the `ray start` cluster, which the module stops at the end.
"""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from codegpt.config import ConfigError
from conftest import REPO
from test_prep_console import LOGURU_LINE
import test_prep_pipeline
from test_prep_pipeline import kept_rows, prep, write

corpus = test_prep_pipeline.corpus  # its fixture: one file per rule, and what each must get

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'codegpt[ray]'")
if not Path("/proc/self/cmdline").exists():
    pytest.skip("these tests find Ray's processes in /proc", allow_module_level=True)


# --- Ray's processes --------------------------------------------------------------------------

def ray_processes() -> dict[int, str]:
    """pid -> command of every Ray process on this machine: raylet, gcs_server, and the Python
    ones (workers and agents title themselves ``ray::...``; the rest run a script of ray's)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        first = argv[0]
        if (first.startswith("ray::") or Path(first.split(" ")[0]).name in ("raylet", "gcs_server")
                or any("/ray/" in a and a.endswith(".py") for a in argv[1:3])):
            found[int(entry.name)] = first
    return found


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = parent(pid)
        if pid == ancestor:
            return True
    return False


@dataclass
class Head:
    address: str
    proc: subprocess.Popen


RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
HEADS: list[int] = []  # pids of the `ray start` clusters this module runs: theirs may stay


@pytest.fixture(scope="module", autouse=True)
def ray_files():
    """Ray writes its session files to /tmp/ray and a token to ~/.ray: for this module both go
    to a folder of its own (RAY_TMPDIR, HOME), short for Ray's socket paths, removed at the
    end. Afterwards neither /tmp/ray nor ~/.ray exists unless it did before."""
    outside = [Path(tempfile.gettempdir()) / "ray", Path.home() / ".ray"]
    before = {p: p.exists() for p in outside}
    folder = Path(tempfile.mkdtemp(prefix="ray-"))
    (folder / "tmp").mkdir()
    (folder / "home").mkdir()
    env = pytest.MonkeyPatch()
    env.setenv("RAY_TMPDIR", str(folder / "tmp"))
    env.setenv("HOME", str(folder / "home"))
    try:
        yield folder
    finally:
        env.undo()
        shutil.rmtree(folder, ignore_errors=True)
    written = [str(p) for p in outside if p.exists() and not before[p]]
    assert not written, f"Ray wrote outside the test's folders: {written}"


@pytest.fixture(scope="module")
def baseline(ray_files) -> set[int]:
    """The Ray processes running before this module's tests (someone else's): left alone."""
    return set(ray_processes())


@pytest.fixture(scope="module")
def head(baseline, ray_files):
    """A 2-CPU Ray cluster started as a user would (`ray start --head --block`), its address;
    stopped by SIGTERM after the module's tests, and then none of its processes may be left.
    Its files go to a folder of its own, not /tmp/ray, so that its address does not stay behind
    in /tmp/ray/ray_current_cluster for a later `ray.init()` to find."""
    temp = Path(tempfile.mkdtemp(prefix="head-", dir=os.environ["RAY_TMPDIR"]))
    env = pytest.MonkeyPatch()
    # Ray's token authentication (recent Rays): `ray start` turns it on once a token exists, and
    # a driver given the cluster's address sends the token only with RAY_AUTH_MODE=token
    if subprocess.run([*RAY_CLI, "get-auth-token", "--generate"],
                      capture_output=True).returncode == 0:
        env.setenv("RAY_AUTH_MODE", "token")
    out = open(temp / "head.out", "w+")
    proc = subprocess.Popen(
        [*RAY_CLI, "start", "--head", "--block", "--num-cpus=2", "--port=0",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.time() + 120
        while not (m := re.search(r"ray start --address='([^']+)'",
                                  (temp / "head.out").read_text())):
            assert proc.poll() is None and time.time() < deadline, (temp / "head.out").read_text()
            time.sleep(0.2)
        HEADS.append(proc.pid)
        yield Head(m.group(1), proc)
    finally:
        HEADS[:] = [p for p in HEADS if p != proc.pid]
        proc.terminate()
        proc.wait(timeout=120)
        out.close()
        left = wait_for_no_ray_processes(baseline)
        shutil.rmtree(temp, ignore_errors=True)
        env.undo()
    assert not left, f"Ray processes left after `ray start --head` stopped: {left}"


def wait_for_no_ray_processes(keep: set[int], timeout: float = 30) -> dict[int, str]:
    """Wait until every Ray process but ``keep`` and those of running HEADS has gone; those
    still there."""
    deadline = time.time() + timeout
    while True:
        left = {p: c for p, c in ray_processes().items()
                if p not in keep and not any(descends_from(p, h) for h in HEADS)}
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def no_ray_process_left(baseline):
    """After each test, no Ray process of its own is left (the shared head's may stay)."""
    yield
    left = wait_for_no_ray_processes(baseline)
    assert not left, f"Ray processes left behind: {left}"
    assert not ray.is_initialized()


# --- what is compared ---------------------------------------------------------------------------

def documents_digest(out: Path) -> dict[str, str]:
    """Each output file's sha256 over its documents: the rows in file order, as JSON, and the
    schema (not the parquet bytes, which carry the writer's metadata)."""
    digests = {}
    for f in sorted((out / "data").glob("*.parquet")):
        table = pq.read_table(f)
        h = hashlib.sha256(str(table.schema.remove_metadata()).encode())
        h.update(json.dumps(table.to_pylist(), sort_keys=True).encode())
        digests[f.name] = h.hexdigest()
    return digests


def totals(stats: dict) -> dict:
    """stats.json without the config (which names the executor): inputs, kept, rejected..."""
    return {k: v for k, v in stats.items() if k != "config"}


def ray_config(**options) -> str:
    return f"executor.ray={json.dumps(options)}"


def prep_cli(out: Path, tasks: int, *overrides: str, env: dict | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`codegpt prep default out_dir=OUT executor.tasks=TASKS OVERRIDES...` as a user runs it,
    in a process of its own (``env``: variables to set, or with None to unset), returning what
    it printed.

    Every run that connects to or starts a Ray cluster is such a process, never this one: Ray's
    threads and state outlive ``ray.shutdown()``, and processes forked afterwards (the local
    executor's workers, in the tests that follow) were seen to segfault in Ray's library and
    the local run to hang."""
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "codegpt.cli", "prep", "default", f"out_dir={out}",
         f"executor.tasks={tasks}", *overrides], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env=environ)


def stats_of(run: subprocess.CompletedProcess, out: Path) -> dict:
    assert run.returncode == 0, run.stderr[-5000:]
    return json.loads((out / "stats.json").read_text())


# --- the tests ------------------------------------------------------------------------------------

def test_prep_on_a_local_ray_cluster_gives_the_local_output(corpus, tmp_path):
    """Without an address, prep starts a cluster of executor.workers CPUs, runs the three jobs
    on it and stops it; the documents and the stats are the local executor's, and datatrove's
    logs stay off the console (each task's in its log file)."""
    root, _ = corpus
    local = prep(root, tmp_path / "local", 4, "executor.workers=2")
    out = tmp_path / "ray"
    run = prep_cli(out, 4, f"sources=[{{type: local, roots: [{root}]}}]", "executor.type=ray",
                   "executor.workers=2", env={"RAY_ADDRESS": None})
    on_ray = stats_of(run, out)
    assert "started a local cluster of 2 CPUs" in run.stderr
    assert len(documents_digest(out)) == 4
    assert documents_digest(out) == documents_digest(tmp_path / "local")
    assert totals(on_ray) == totals(local) and on_ray["accounted"]
    assert not LOGURU_LINE.search(run.stderr + run.stdout), run.stderr + run.stdout
    task_log = (out / "logs" / "1_filter" / "logs" / "task_00003.log").read_text()
    assert "Launching pipeline for rank=3" in task_log and "Processing done for rank=3" in task_log
    assert "3_write: running 4 of 4 tasks on Ray" in (out / "logs" / "prep.log").read_text()


@pytest.fixture(scope="module")
def bulk(tmp_path_factory) -> Path:
    """1,000 different modules of 6 KB (6 MB), kept by every filter: in two tasks, each task of
    1_filter runs for 0.9 to 1.2 s on 2 cores with the corpus and decontamination, 0.45 to 0.6 s
    alone without (measured), while the killer below kills it within milliseconds of its start."""
    root = tmp_path_factory.mktemp("bulk")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "value", "count", "total", "index", "item"]
    for i in range(1000):
        body = [f"def f{i}_{j}({rng.choice(words)}, {rng.choice(words)}_{rng.randrange(10**6)}):"
                f"\n    return {rng.choice(words)} + {rng.randrange(10**9)}" for j in range(100)]
        write(root / f"repo_{i % 8}" / f"mod_{i:04d}.py", "\n".join(body) + "\n")
    return root


class TaskKiller(threading.Thread):
    """SIGKILLs the first process whose title is ``title`` (a Ray worker running that task),
    as soon as it shows, noting whether the task had completed by then (``marker``)."""

    def __init__(self, title: str, marker: Path, timeout: float = 120):
        super().__init__(daemon=True)
        self.title, self.marker, self.timeout = title, marker, timeout
        self.killed: int | None = None
        self.completed_before_kill: bool | None = None

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            pids = [p for p, c in ray_processes().items() if c == self.title]
            if pids:
                self.completed_before_kill = self.marker.exists()
                os.kill(pids[0], signal.SIGKILL)
                self.killed = pids[0]
                return
            time.sleep(0.005)


def test_a_task_whose_worker_is_killed_runs_again_and_the_output_is_the_local_one(
        corpus, bulk, head, tmp_path):
    """SIGKILL of the worker process running task 0 of 1_filter, on the `ray start` cluster
    (executor.ray.address): Ray runs the task again; every document is written once, the
    output is the local executor's, and the cluster is still up afterwards."""
    root, _ = corpus
    sources = f"sources=[{{type: local, roots: [{root}, {bulk}]}}]"
    local = prep(root, tmp_path / "local", 2, sources, "executor.workers=2")
    out = tmp_path / "ray"
    killer = TaskKiller("ray::codegpt prep 1_filter task 0",
                        out / "logs" / "1_filter" / "completions" / "00000")
    killer.start()
    run = prep_cli(out, 2, sources, "executor.type=ray", ray_config(address=head.address))
    on_ray = stats_of(run, out)
    killer.join(timeout=1)
    assert killer.killed, "no worker ran task 0 of 1_filter"
    assert killer.completed_before_kill is False  # killed while the task ran
    assert (out / "logs" / "1_filter" / "completions" / "00000").exists()  # run again, elsewhere
    ids = Counter(r["id"] for r in kept_rows(out))
    assert ids and max(ids.values()) == 1  # no document twice
    assert set(ids) == {r["id"] for r in kept_rows(tmp_path / "local")}  # none lost
    assert documents_digest(out) == documents_digest(tmp_path / "local")
    assert totals(on_ray) == totals(local) and on_ray["inputs"]["files"] > 1000
    assert not LOGURU_LINE.search(run.stderr + run.stdout), run.stderr + run.stdout
    assert f"connected to the cluster at {head.address}" in run.stderr
    assert head.proc.poll() is None  # connected to, not stopped


def test_with_no_retries_a_killed_task_fails_the_job_naming_it(bulk, head, tmp_path):
    """executor.ray.retries=0: the same kill fails the run, with the task and its log named
    (datatrove's executor warned and went on to wait for it forever). The cluster is the one
    at $RAY_ADDRESS, as no executor.ray.address is given."""
    killer = TaskKiller("ray::codegpt prep 1_filter task 1",
                        tmp_path / "logs" / "1_filter" / "completions" / "00001")
    killer.start()
    run = prep_cli(tmp_path, 2, f"sources=[{{type: local, roots: [{bulk}]}}]",
                   "decontam.enabled=false", "executor.type=ray", ray_config(retries=0),
                   env={"RAY_ADDRESS": head.address})
    assert f"connected to the cluster at {head.address}" in run.stderr
    assert run.returncode != 0
    assert re.search(r"RuntimeError: prep job 1_filter: 1 of 2 tasks failed \(1; their logs: "
                     r".*/logs/1_filter/logs/task_NNNNN.log\); task 1: WorkerCrashedError",
                     run.stderr), run.stderr[-5000:]
    assert killer.killed and killer.completed_before_kill is False
    assert (tmp_path / "logs" / "1_filter" / "completions" / "00000").exists()  # the other ran


def test_bad_ray_options_are_config_errors_before_anything_is_written(corpus, tmp_path,
                                                                      monkeypatch):
    """Unknown options, ours repeated, unsupported ones, bad values, a cluster address nothing
    answers on, and ray not installed: each a ConfigError naming it, before the output folder
    is made or a cluster started."""
    root, _ = corpus
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    cases = [
        ({"cpu_per_task": 2}, r"unknown option 'executor.ray.cpu_per_task'; did you mean "
                              r"'cpus_per_task'"),
        ({"workers": 4}, r"executor.ray.workers is set by codegpt"),
        ({"nodes_per_task": 2}, r"executor.ray.nodes_per_task is not supported"),
        ({"retries": -1}, r"executor.ray.retries must be a whole number >= 0, got -1"),
        ({"mem_per_cpu_gb": "2G"}, r"executor.ray.mem_per_cpu_gb must be a number >= 0"),
        ("{cpus_per_task: .inf}", r"executor.ray.cpus_per_task must be a number > 0, got inf"),
        ({"ray_remote_kwargs": {"max_retries": 5}}, r"max_retries is set by executor.ray.retries"),
        ({"ray_remote_kwargs": {"max_restarts": 1}}, r"ray_remote_kwargs: .*max_restarts"),
        ({"address": f"127.0.0.1:{free}"}, rf"cannot reach the Ray cluster at '127.0.0.1:{free}'"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            prep(root, tmp_path / "out", 1, "executor.type=ray",
                 f"executor.ray={options}" if isinstance(options, str) else ray_config(**options))
        assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs ray, which is not installed: "
                                          r"pip install 'codegpt\[ray\]'"):
        prep(root, tmp_path / "out", 1, "executor.type=ray")


def test_a_task_larger_than_the_local_cluster_is_refused_and_the_cluster_stopped(corpus,
                                                                                 tmp_path):
    """A task no node can hold would wait forever: on a cluster started here it is an error,
    and the cluster is stopped (no Ray process is left: the autouse fixture)."""
    root, _ = corpus
    run = prep_cli(tmp_path, 1, f"sources=[{{type: local, roots: [{root}]}}]",
                   "executor.type=ray", "executor.workers=1", ray_config(cpus_per_task=2),
                   env={"RAY_ADDRESS": None})
    assert run.returncode == 2, run.stderr[-5000:]
    assert re.search(r"error: a task asks for 2 CPU.* the local Ray cluster has 1 CPU",
                     run.stderr), run.stderr[-5000:]
