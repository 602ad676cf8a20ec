"""The HumanEval sandbox contains hostile programs under every isolation method that works here.

Each test runs under every available method (bubblewrap, unshare, rlimits-only fallback); a
method that does not work on this machine is skipped with the reason. The fallbacks contain
everything bubblewrap does (timeouts, fork and memory bombs, C-level hangs, signals to the
harness, sockets, fake passes, floods of output, stdin) except writes to world-writable paths
such as /tmp: only bubblewrap mounts the host file system read-only, so that one check is skipped
for the fallbacks (and, when the tests do not run as root, so are the checks that rely on the
unprivileged uid the sandbox drops to).

A HumanEval-shaped ``Program`` passes only when the launcher's own call of the test's ``check``
returns: the fake-pass tests pair a wrong solution with a trick and expect a failure.
"""
from __future__ import annotations

import copy
import os
import pickle
import platform
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from codegpt import sandbox
from codegpt.sandbox import (BWRAP, METHODS, RLIMITS, Program, Result, run_program,
                                   run_programs)

REPO = Path(__file__).resolve().parents[1]
ROOT = os.geteuid() == 0
PASS = "def check(f):\n    assert f(1) == 2\n\ncheck(lambda x: x + 1)\n"
FAIL = "def check(f):\n    assert f(1) == 3\n\ncheck(lambda x: x + 1)\n"
T = 2.0      # timeout for hostile programs
SLACK = 3.0  # how much longer than the timeout a contained run may take


SOLUTION = "def inc(x):\n    return x + 1\n"
WRONG = "def inc(x):\n    return x\n"
TEST = "def check(candidate):\n    assert candidate(1) == 2\n"


def with_check(body: str, solution: str = SOLUTION) -> Program:
    """A hostile body, then a solution, then the test: passes if the body lets check() run."""
    return Program(body + "\n" + solution, TEST, "inc")


def faked(body: str) -> Program:
    """A trick followed by a wrong solution: any pass would be a fake one."""
    return with_check(body, WRONG)


_AVAILABLE: list[str] | None = None


def available() -> list[str]:
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = sandbox.available_methods()
    return _AVAILABLE


@pytest.fixture(params=METHODS)
def method(request) -> str:
    if request.param not in available():
        pytest.skip(f"isolation method {request.param!r} does not work on this machine "
                    f"(bubblewrap: `apt-get install -y bubblewrap`; unshare: util-linux)")
    return request.param


def run(body: str, method: str, timeout: float = T, **kw) -> Result:
    start = time.monotonic()
    r = run_program(with_check(body), timeout=timeout, method=method, **kw)
    assert time.monotonic() - start < timeout + SLACK, r
    assert len(r.detail) < 1000
    return r


def sandbox_pids() -> list[int]:
    """Processes owned by the private uids this process claimed (only meaningful as root; other
    harnesses on the machine have their own): all but zombies, and zombie thread-group leaders
    whose other threads still run count too."""
    ours = sandbox._UIDS.claimed()
    out = []
    for e in os.listdir("/proc"):
        try:
            if e.isdigit() and os.stat(f"/proc/{e}").st_uid in ours:
                with open(f"/proc/{e}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
                if fields[0] != b"Z" or int(fields[17]) > 1:
                    out.append(int(e))
        except (OSError, IndexError, ValueError):
            pass
    return out


def no_sandbox_processes_left(wait: float = 5.0) -> list[int]:
    """``sandbox_pids()`` once it is empty, or what is left after ``wait`` seconds: the sweep
    SIGKILLs every process of a run's uid but does not wait for those already exiting, and on a
    loaded machine the kernel may take a moment to tear them down."""
    deadline = time.monotonic() + wait
    while (left := sandbox_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_isolation_method_is_known():
    assert sandbox.isolation_method() in METHODS
    assert RLIMITS in available()


def test_correct_program_passes_and_wrong_fails(method):
    assert run_program(PASS, method=method).status == "passed"
    r = run_program(FAIL, method=method)
    assert r.status == "failed" and "AssertionError" in r.detail
    assert run_program(with_check(""), method=method).status == "passed"
    r = run_program(faked(""), method=method)
    assert r.status == "failed" and "AssertionError" in r.detail


def test_program_is_human_evals_text_in_pieces():
    p = Program(SOLUTION, TEST, "inc")
    assert p == SOLUTION + "\n\n" + TEST + "\n\ncheck(inc)\n"
    for clone in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(clone) is Program and clone == p
        assert (clone.solution, clone.test, clone.entry_point) == (SOLUTION, TEST, "inc")
    for bad in ("", "inc(1)", "a b", "x; import os"):
        with pytest.raises(ValueError, match="identifier"):
            Program(SOLUTION, TEST, bad)


def test_empty_completion_missing_entry_point_or_check_fail(method):
    prompt = 'def inc(x):\n    """Add one."""\n'
    r = run_program(Program(prompt, TEST, "inc"), method=method)  # the empty completion
    assert r.status == "failed" and "AssertionError" in r.detail, r
    r = run_program(Program(SOLUTION, TEST, "dec"), method=method)
    assert r.status == "failed" and "'dec' is not defined" in r.detail, r
    r = run_program(Program(SOLUTION, "assert True\n", "inc"), method=method)
    assert r.status == "failed" and "check() is missing" in r.detail, r


# Tricks on the code that reports the verdict, each followed by a wrong solution, so that a pass
# would be a fake one. The first ones passed while the launcher looked os._exit up after the
# program had run: its failure path called the no-op and fell through to the nonce write.
FAKE_PASSES = {
    "no-op os._exit": "import os\nos._exit = lambda code: None",
    "os.write and os._exit": (
        "import os\nw = os.write\n"
        "os.write = lambda fd, data: w(fd, data) if fd < 3 else len(data)\n"
        "os._exit = lambda code: None"),
    "launcher globals via sys.modules": (
        "import os, sys, types\nfake = types.SimpleNamespace(**vars(os))\n"
        "fake._exit = lambda code: None\nsys.modules['__main__'].os = fake\n"
        "sys.modules['__main__'].sys = types.SimpleNamespace(**vars(sys))"),
    "sys.modules['os'] replaced": (
        "import os, sys, types\nfake = types.SimpleNamespace(**vars(os))\n"
        "fake._exit = lambda code: None\nsys.modules['os'] = fake"),
    "sys.exit and the excepthooks": (
        "import os, sys\nsys.exit = sys.excepthook = sys.__excepthook__ = lambda *a: None\n"
        "os._exit = lambda code: None"),
    "stdout and stderr replaced": (
        "import io, os, sys\n"
        "class Quiet(io.StringIO):\n    def flush(self):\n        os._exit = lambda c: None\n"
        "sys.stdout = sys.stderr = Quiet()"),
    "builtins.print and the exception classes": (
        "import builtins, os\nbuiltins.print = lambda *a, **k: None\n"
        "builtins.BaseException = builtins.SystemExit = type('Never', (Exception,), {})\n"
        "os._exit = lambda code: None"),
    "builtins.AssertionError": (
        "import builtins\nbuiltins.AssertionError = type('Harmless', (Warning,), {})"),
    "builtins.__import__": (
        "import builtins, os\nreal = builtins.__import__\n"
        "builtins.__import__ = lambda n, *a, **k: os if n == 'sys' else real(n, *a, **k)\n"
        "os._exit = lambda code: None"),
    "builtins exec, compile and type": (
        "import builtins, os\nbuiltins.exec = builtins.compile = lambda *a, **k: None\n"
        "builtins.type = lambda *a: type(lambda: 0)\nos._exit = lambda code: None"),
}


def test_rebinding_what_reports_the_verdict_is_not_a_pass(method):
    names = list(FAKE_PASSES)
    results = run_programs([faked(FAKE_PASSES[n]) for n in names], timeout=T, workers=2,
                           method=method)
    for name, r in zip(names, results):
        assert r.status == "failed", (name, r)
    # the same tricks before a correct solution: the real check still runs, and passes
    results = run_programs([with_check(FAKE_PASSES[n]) for n in names], timeout=T, workers=2,
                           method=method)
    for name, r in zip(names, results):
        assert r.status == "passed", (name, r)


def test_a_check_of_the_programs_own_does_not_count(method):
    bodies = [
        "def check(candidate):\n    pass",
        "import builtins\nbuiltins.check = lambda candidate: None",
        # a thread that keeps replacing check, racing the test module's definition of it
        "import sys, threading\nsys.setswitchinterval(1e-6)\ng = globals()\n"
        "def spin():\n    while True:\n        g['check'] = lambda candidate: None\n"
        "threading.Thread(target=spin, daemon=True).start()",
        # ... or the code of the test's check
        "import sys, threading\nsys.setswitchinterval(1e-6)\ng = globals()\n"
        "def spin():\n    while True:\n        f = g.get('check')\n        if f:\n"
        "            f.__code__ = (lambda candidate: None).__code__\n"
        "threading.Thread(target=spin, daemon=True).start()",
    ]
    results = run_programs([faked(b) for b in bodies], timeout=T, workers=2, method=method)
    for body, r in zip(bodies, results):
        assert r.status == "failed", (body, r)


def test_exits_and_signals_from_the_entry_point_or_a_thread_fail(method):
    solutions = [
        "def inc(x):\n    raise SystemExit(0)\n",
        "def inc(x):\n    import sys\n    sys.exit(0)\n",
        "def inc(x):\n    import os\n    os._exit(0)\n",
        "def inc(x):\n    raise KeyboardInterrupt\n",
        "def inc(x):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "def inc(x):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGTERM)\n",
        "def inc(x):\n    import os, threading, time\n"
        "    threading.Thread(target=os._exit, args=(0,)).start()\n    time.sleep(5)\n",
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), os._exit(0))).start()\n"
        "def inc(x):\n    time.sleep(5)\n    return x + 1\n",
    ]
    results = run_programs([Program(s, TEST, "inc") for s in solutions], timeout=T, workers=2,
                           method=method)
    for solution, r in zip(solutions, results):
        assert r.status in ("failed", "timeout"), (solution, r)


def test_a_completion_cannot_decorate_or_swallow_the_tests(method):
    prompt = 'def noop(f):\n    return lambda *a: None\n\n\ndef inc(x):\n    """Add one."""\n'
    completions = ["    return x\n@noop",
                   "    return x\n@(lambda f: lambda *a: None)\n",
                   "    return x\n@noop\n\n",
                   '    return x\n_ = """\n',
                   "    return x\n_ = '''",
                   "    return (x\n",
                   "    return [x,\n",
                   "    return x\nif True:\n",
                   "    return x\nclass Swallow:\n",
                   "    return x\n_ = '\\\n"]
    test = "def check(candidate):\n    '''the check'''\n    assert candidate(1) == 2\n"
    results = run_programs([Program(prompt + c, test, "inc") for c in completions], timeout=T,
                           workers=2, method=method)
    for completion, r in zip(completions, results):
        assert r.status == "failed", (completion, r)
    assert run_program(Program(prompt + "    return x + 1\n", test, "inc"),
                       method=method).status == "passed"


def test_many_threads_fit_in_memory(method):
    """32 threads alive at once (RLIMIT_AS alone stopped this at about 14: each thread's stack
    and malloc arena reservation counted as memory)."""
    body = ("import threading\nout = []\nbarrier = threading.Barrier(32)\n"
            "def work(i):\n    b = bytearray(1 << 20)\n    barrier.wait()\n"
            "    out.append(sum(range(i * 1000)) + len(b))\n"
            "threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]\n"
            "for t in threads:\n    t.start()\nfor t in threads:\n    t.join()\n"
            "assert len(out) == 32")
    r = run(body, method)
    assert r.status == "passed", r


def test_exit_before_check_is_not_a_pass(method):
    for body in ["import sys\nsys.exit(0)", "import os\nos._exit(0)",
                 "raise SystemExit(0)", "import os, sys\nsys.stdout.flush()\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])",
                 "import atexit, os\natexit.register(lambda: os._exit(0))\nraise KeyError('x')"]:
        r = run(body, method)
        assert r.status == "failed", (body, r)


def test_fake_pass_by_writing_to_fds_is_not_a_pass(method):
    body = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n"
            "    except OSError:\n        pass\nos._exit(0)")
    assert run(body, method).status == "failed"


def test_hangs_time_out_in_bounded_time(method):
    bodies = ["while True:\n    pass",
              "import re\nre.match('(a*)*b', 'a' * 50)",
              "import ctypes\nctypes.CDLL(None).pause()",
              "import time\ntime.sleep(1000)",
              "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
              "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(1000)\n"
              "else:\n    while True:\n        pass"]
    start = time.monotonic()
    results = run_programs([with_check(b) for b in bodies], timeout=T, workers=len(bodies),
                           method=method)
    assert time.monotonic() - start < T + SLACK
    assert [r.status for r in results] == ["timeout"] * len(bodies), results
    if ROOT:
        assert no_sandbox_processes_left() == []


def test_daemonized_straggler_is_killed(method):
    """A child that leaves the process group and outlives a passing program is killed."""
    marker = f"codegpt-straggler-{secrets.token_hex(4)}"
    body = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    os.closerange(0, 64)\n"
            f"    os.execvp('sleep', ['sleep', '1000'])\n# {marker}")
    r = run(body, method)
    assert r.status == "passed", r
    time.sleep(0.2)
    if ROOT:
        assert no_sandbox_processes_left() == []


def test_straggler_whose_main_thread_exited_is_killed(method):
    """A straggler whose main thread exits (a zombie leader with live threads) is killed too."""
    nr_exit = {"x86_64": 60, "aarch64": 93}.get(platform.machine())
    if nr_exit is None:
        pytest.skip(f"no exit(2) syscall number known for {platform.machine()}")
    body = ("import os\nif os.fork() == 0:\n    os.setsid()\n    os.closerange(0, 64)\n"
            "    import ctypes, threading, time\n"
            "    threading.Thread(target=time.sleep, args=(1000,)).start()\n"
            f"    ctypes.CDLL(None).syscall({nr_exit}, 0)\n"
            "import time\ntime.sleep(0.5)  # until only the child's thread is left\n")
    r = run(body, method)
    assert r.status == "passed", r
    time.sleep(0.2)
    if ROOT:
        assert no_sandbox_processes_left() == []


@pytest.mark.skipif(not ROOT, reason="the sandbox drops to a private uid only when run as root")
def test_programs_run_as_a_private_uid_without_groups(method):
    r = run("import os\nuid = os.getuid()\n"
            f"assert uid >= {sandbox.UID_BASE} and os.getresuid() == (uid, uid, uid)\n"
            "assert os.getresgid() == (uid, uid, uid) and os.getgroups() == []", method)
    assert r.status == "passed", r


def test_fork_bomb_is_contained(method):
    body = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        pass")
    r = run(body, method)
    assert r.status in ("failed", "timeout")
    time.sleep(0.2)
    if ROOT:
        assert no_sandbox_processes_left() == []
    assert run_program(PASS, method=method).status == "passed"


def test_memory_bomb_is_contained(method):
    r = run("x = bytearray(16 * 1024 ** 3)", method)
    assert r.status == "failed" and "MemoryError" in r.detail, r
    r = run("x = bytearray(4 * 1024 ** 3)", method)
    assert r.status == "failed" and "MemoryError" in r.detail, r
    # shared anonymous memory escapes RLIMIT_DATA; the address-space backstop stops it
    r = run("import mmap\nm = mmap.mmap(-1, 4 * 1024 ** 3)\nm[::4096] = b'x' * (1 << 20)", method)
    assert r.status == "failed" and "Cannot allocate memory" in r.detail, r
    # (a busy machine zeroes 256 MB slowly: the limit under test is memory, not time)
    r = run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))", method,
            memory_mb=256, timeout=10)
    assert r.status == "failed" and "MemoryError" in r.detail, r


def test_big_file_is_refused(method):
    r = run("with open('big', 'wb') as f:\n    f.write(b'0' * (200 * 1024 ** 2))", method)
    assert r.status == "failed", r


def test_output_flood_is_bounded(method):
    r = run("import sys, os\nb = b'x' * (1 << 20)\nfor _ in range(1 << 14):\n"
            "    os.write(1, b)\n    os.write(2, b)", method)
    assert r.status in ("failed", "timeout", "passed")  # bounded time and detail, checked in run()
    r = run("import sys\nprint('y' * (50 * 1024 ** 2))\nraise ValueError('the end')", method,
            timeout=10)
    assert r.status == "failed" and "ValueError: the end" in r.detail, r


def test_stdin_does_not_hang(method):
    r = run("import sys\nassert sys.stdin.read() == ''\ninput()", method)
    assert r.status == "failed" and "EOFError" in r.detail, r


def test_socket_cannot_reach_the_host(method):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def serve():
        end = time.monotonic() + T + SLACK
        while time.monotonic() < end:
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "s.sendall(b'hello')", method)
        r2 = run(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))", method)
        t.join(0.5)
    finally:
        server.close()
    assert r.status == "failed" and r2.status == "failed", (r, r2)
    assert accepted == []


def test_signals_cannot_reach_the_harness(method):
    if method == RLIMITS and not ROOT:
        pytest.skip("rlimits-only without root runs as the harness's own uid: kill -1 would reach it")
    victim = subprocess.Popen(["sleep", "30"])
    try:
        killers = ["import os\nos.kill(os.getppid(), 9)",
                   f"import os\nos.kill({os.getpid()}, 9)",
                   f"import os\nos.kill({victim.pid}, 9)",
                   f"import os\nos.killpg({os.getpgid(0)}, 9)",
                   "import os\nos.killpg(os.getpgid(os.getppid()), 9)",
                   "import os\nos.kill(-1, 9)",
                   "import subprocess\nsubprocess.run(['kill', '-9', '-1'])\nraise RuntimeError('x')"]
        sleeper = with_check("import time\ntime.sleep(1.0)")
        programs = [sleeper] + [with_check(k) for k in killers] + [sleeper]
        results = run_programs(programs, timeout=T, workers=len(programs), method=method)
        assert results[0].status == "passed" and results[-1].status == "passed", results
        assert victim.poll() is None
        for r in results[1:-1]:
            assert r.status in ("failed", "timeout", "passed")  # each contained; harness alive
    finally:
        victim.kill()
        victim.wait()


def test_files_outside_the_workdir_are_untouched(method, tmp_path):
    if method != BWRAP and not ROOT:
        pytest.skip(f"{method} without root runs as the harness's own uid, which may write "
                    "wherever the harness may; only bubblewrap mounts the host read-only")
    tag = secrets.token_hex(6)
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    tmp_canary = Path(tempfile.gettempdir()) / f"codegpt-canary-{tag}"
    tmp_canary.write_text("canary")
    targets = {  # path -> must stay absent; /tmp itself only under bubblewrap
        tmp_path / f"escape-{tag}": True,
        REPO / f"escape-{tag}": True,
        Path.home() / f"escape-{tag}": True,
        Path("/tmp") / f"escape-{tag}": method == BWRAP,
    }
    try:
        writes = "".join(f"try:\n    open({str(p)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
                         for p in targets)
        attacks = ("import os, shutil\n" + writes +
                   f"for p in [{str(canary)!r}, {str(tmp_canary)!r}]:\n"
                   "    for act in (lambda: open(p, 'w').write('gone'), lambda: os.remove(p),\n"
                   "                lambda: os.chmod(p, 0o777), lambda: os.rename(p, p + '.x')):\n"
                   "        try:\n            act()\n        except OSError:\n            pass\n"
                   f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n")
        r = run(attacks, method)
        assert r.status == "passed", r  # the attacks fail quietly, then check() runs
        assert canary.read_text() == "canary"
        assert tmp_canary.read_text() == "canary"
        assert oct(tmp_canary.stat().st_mode & 0o777) != oct(0o777)
        for path, must_be_absent in targets.items():
            if must_be_absent:
                assert not path.exists(), path
        if method != BWRAP:
            pytest.skip(f"{method} leaves world-writable paths such as /tmp writable; "
                        "only bubblewrap mounts the host file system read-only")
    finally:
        tmp_canary.unlink(missing_ok=True)
        for p in targets:
            if p.exists() and p.is_file():
                p.unlink()


def test_workdir_is_private_and_removed(method):
    before = set(Path(tempfile.gettempdir()).glob("codegpt-sandbox-*"))
    body = ("import os\nopen('f.txt', 'w').write('x')\nos.mkdir('d')\nopen('d/g', 'w').write('y')\n"
            "os.chmod('d', 0)\nassert os.listdir('.') != []")
    assert run(body, method).status == "passed"
    after = set(Path(tempfile.gettempdir()).glob("codegpt-sandbox-*"))
    assert after <= before


def test_uids_are_not_shared_between_harnesses(tmp_path):
    """Two pools on one lock directory (two harnesses) never hand out the same uid; without a
    safe directory a pool still works, for its own process only."""
    locks = tmp_path / "locks"
    first, second = sandbox._UidPool(1000, str(locks)), sandbox._UidPool(1000, str(locks))
    assert [first.acquire(), first.acquire()] == [1000, 1001]
    assert [second.acquire(), second.acquire()] == [1002, 1003]
    first.release(1000)
    assert first.acquire() == 1000 and second.claimed() == {1002, 1003}
    os.chmod(locks, 0o777)  # writable by anyone: a sandboxed program could remove a claim
    assert sandbox._UidPool(1000, str(locks)).acquire() == 1000


def test_run_programs_keeps_input_order():
    programs = [PASS if i % 3 else FAIL for i in range(20)]
    results = run_programs(programs, timeout=5, workers=4)
    assert [r.status for r in results] == ["failed" if i % 3 == 0 else "passed" for i in range(20)]


def test_forced_method_is_validated(monkeypatch):
    monkeypatch.setattr(sandbox, "_METHOD", None)
    monkeypatch.setenv("CODEGPT_SANDBOX", "chroot")
    with pytest.raises(ValueError, match="CODEGPT_SANDBOX"):
        sandbox.isolation_method()
    monkeypatch.setenv("CODEGPT_SANDBOX", "rlimits")
    assert sandbox.isolation_method() == RLIMITS
