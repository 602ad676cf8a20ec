"""What a command may write and delete: checked output paths, locks, completion markers.

The rule every command that writes follows (README, "What codegpt writes and deletes"):

* **Nothing it did not create is deleted.** An output path that is empty, the filesystem root,
  the home folder, the current folder or one of its parents is refused. An existing folder is
  written to only when it is empty or recognisably the same stage's output (its marker names
  the stage, or, for folders written before markers existed, it holds that stage's files and
  nothing else). Another stage's folder, a pipeline folder or a folder with unrelated files is
  refused, naming what is in the way.
* **A folder is replaced only when the new one is complete.** Stages whose output is made in
  one go (tokenizer, tokenize, sft-data, export, report) write into a staging folder beside the
  output and swap it in at the end: a kill, an error or a full disk leaves the previous output
  as it was. Stages that resume where they stopped (prep, train, eval, reference) write in
  place, never deleting what an earlier run of theirs wrote unless it is superseded.
* **Every output carries a completion marker,** ``codegpt-output.json``: written first with
  ``"status": "running"``, rewritten last with ``"status": "complete"`` and the size of each
  file the next stage reads. ``require_complete`` is how the next stage (and the reference
  run, and ``codegpt report``) tells a finished output from a killed, failed or altered one.
* **One run per output folder.** ``OutputLock`` is a lock file beside the output, naming the
  holder's pid, host and command; a second run is refused while the holder lives. A lock left
  by a dead process (same host: the pid is gone, or is another process now; the machine was
  rebooted; or an earlier incarnation of the same Slurm job) is taken over with a warning.
* **A full disk is one line** (``DiskFullError``) naming the output and the stage; the
  staging folder or temporary files are removed first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from codegpt.benchmarks import BENCHMARKS
from codegpt.infilling import SETS as INFILLING_SETS
from codegpt.errors import (CodegptError, DiskFullError, IncompleteError, LockError,
                             OutputError)
from codegpt.io import atomic_write_bytes, atomic_write_json, overwrite_in_place

log = logging.getLogger(__name__)

MARKER = "codegpt-output.json"
FORMAT = "codegpt-output-v1"
LOCK_SUFFIX = ".codegpt-lock"
STAGING = ".codegpt-staging-"      # .NAME.codegpt-staging-PID: a folder being written aside
REPLACED = ".codegpt-replaced-"    # .NAME.codegpt-replaced-PID: the previous one, being removed


@dataclass(frozen=True)
class Stage:
    """A command's output folder: what it holds and how to recognise one written before
    markers existed."""

    command: str                       # as a user types it after `codegpt`
    entries: tuple[str, ...]           # glob patterns of the top-level names it writes
    legacy: Callable[[Path], bool]     # an unmarked folder that is this stage's (older codegpt)
    key: str = "out_dir"               # how the user names the output (for messages)
    folder: str = ""                   # its usual name in a pipeline folder (for messages)

    def owns(self, name: str) -> bool:
        return name == MARKER or any(fnmatch.fnmatchcase(name, p) for p in self.entries)


def eval_command(benchmark: str) -> str:
    """The command (and marker stage) of an evaluation on ``benchmark``: ``eval NAME``, or
    ``eval infilling`` for an infilling set."""
    return "eval infilling" if benchmark in INFILLING_SETS else f"eval {benchmark}"


def _json_field(path: Path, key: str) -> object:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


STAGES: dict[str, Stage] = {
    "prep": Stage("prep", ("data", "stats.json", "rejected", "logs", "work"),
                  lambda f: (f / "work" / "run.json").is_file(), folder="data"),
    "tokenizer": Stage("tokenizer", ("tokenizer.json", "tokenizer_config.json",
                                     "tokenizer_meta.json", "config.yaml"),
                       lambda f: _json_field(f / "tokenizer_meta.json", "format")
                       == "codegpt-tokenizer-v1", folder="tokenizer"),
    "tokenize": Stage("tokenize", ("meta.json", "train", "val"),
                      lambda f: _json_field(f / "meta.json", "format") == "codegpt-tokens-v1",
                      folder="tokens"),
    "sft-data": Stage("sft-data", ("train.jsonl", "val.jsonl", "stats.json", "rejected",
                                   "config.yaml"),
                      lambda f: _json_field(f / "stats.json", "candidates") is not None,
                      folder="sft-data"),
    "train": Stage("train", ("config.yaml", "metrics.jsonl", "status.json", "checkpoints",
                             "wandb", "wandb_id.txt", "loss.png"),
                   lambda f: (f / "status.json").is_file() or (f / "checkpoints").is_dir(),
                   folder="train"),
    # one per benchmark (``eval_command``): an evaluation resumes only as the same benchmark's;
    # folders older than markers are HumanEval's (the only benchmark there was)
    **{eval_command(name): Stage(eval_command(name), ("*.jsonl", "results.json"),
                                 (lambda f: (f / "results.json").is_file()
                                  or (f / "samples.jsonl").is_file())
                                 if name == "humaneval" else lambda f: False, key="--out",
                                 folder=name)
       for name in (*BENCHMARKS, "infilling")},
    "export": Stage("export", ("config.json", "model.safetensors", "generation_config.json",
                               "tokenizer.json", "tokenizer_config.json",
                               "special_tokens_map.json"),
                    lambda f: (f / "config.json").is_file()
                    and (f / "model.safetensors").is_file(), key="--out", folder="hf"),
    "report": Stage("report", ("report.html", "*.png"),
                    lambda f: (f / "report.html").is_file(), key="--out", folder="report"),
    "reference": Stage("reference", ("configs", "data", "tokenizer", "tokens", "train",
                                     "sft-data", "sft", *BENCHMARKS, "infilling", "report", "timings.json",
                                     "results.json", ".*" + LOCK_SUFFIX, ".*" + STAGING + "*",
                                     ".*" + REPLACED + "*", ".replaced"),
                       lambda f: (f / "timings.json").is_file(), folder="reference"),
}


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}")
    return STAGES[stage]


# --- the marker --------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_marker(folder: str | Path) -> dict | None:
    """The folder's marker, or None when it has none (or it cannot be read as one)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": FORMAT, "stage": None, "status": "unreadable"}
    if not isinstance(marker, dict) or "stage" not in marker:
        return {"format": FORMAT, "stage": None, "status": "unreadable"}
    return marker


def write_marker(folder: Path, stage: str, status: str, files: Iterable[str] = (),
                 **extra) -> dict:
    """Write the marker: ``running`` when a run starts, ``complete`` (with the size of each
    file in ``files``, relative to ``folder``) as the last thing it writes."""
    before = read_marker(folder) or {}
    marker = {"format": FORMAT, "stage": stage, "status": status,
              "started": before.get("started") if status != "running" else _now(),
              "host": socket.gethostname(), "pid": os.getpid(), **extra}
    if status == "complete":
        marker["finished"] = _now()
        marker["files"] = {rel: (folder / rel).stat().st_size for rel in sorted(set(files))}
    try:
        atomic_write_json(folder / MARKER, marker)
    except OSError as e:
        if status != "failed" or not is_disk_full(e):
            raise
        # a full disk has no room for a second copy: the marker's own blocks take the news
        overwrite_in_place(folder / MARKER, json.dumps(marker) + "\n")
    return marker


def all_files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the marker, relative to it."""
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER]


def completion_problem(folder: str | Path, stage: str) -> str | None:
    """Why ``folder`` is not a complete output of ``stage`` according to its marker, or None
    when it is. A folder without a marker is ``"unmarked"``."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return "unmarked"
    if marker.get("stage") != stage:
        other = marker.get("stage")
        return (f"it is the output of `codegpt {other}`, not of `codegpt {stage}`" if other
                else f"its {MARKER} cannot be read")
    if marker.get("status") != "complete":
        how = {"running": "did not finish there (it is running, or was killed)",
               "failed": f"failed there ({marker.get('error', 'see its log')})"}
        return f"`codegpt {stage}` {how.get(marker.get('status'), 'did not finish there')}"
    files = marker.get("files") or {}
    if not (isinstance(files, dict) and all(isinstance(r, str) and type(s) is int
                                            for r, s in files.items())):
        return f"its {MARKER} lists its files in an unknown form"
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, {size} when it was written"
    return None


def output_state(folder: str | Path, stage: str) -> str:
    """``complete``, ``incomplete`` (marked, but not finished or altered since), ``unmarked``
    (no marker: written by hand or by an older codegpt) or ``absent``."""
    folder = Path(folder)
    if not folder.is_dir():
        return "absent"
    problem = completion_problem(folder, stage)
    return {None: "complete", "unmarked": "unmarked"}.get(problem, "incomplete")


def require_complete(folder: str | Path, stage: str, legacy_file: str | None = None) -> None:
    """Refuse to read ``folder`` unless ``stage`` finished writing it: its marker says complete
    and every file it lists is there with the size it had. An unmarked folder (older codegpt,
    or made by hand) passes when it holds ``legacy_file``, which that stage wrote last, or when
    no ``legacy_file`` is given."""
    folder = Path(folder)
    problem = completion_problem(folder, stage)
    if problem is None:
        return
    if problem == "unmarked":
        if legacy_file is None or (folder / legacy_file).exists():
            return
        problem = f"it has no {legacy_file}"
    raise IncompleteError(f"{folder} is not a complete output of `codegpt {stage}`: {problem}; "
                          f"run `codegpt {stage}` again to finish it")


# --- which paths a command may write -------------------------------------------------------------

def _protected(path: Path) -> str | None:
    """Why ``path`` (resolved) may never be an output folder, or None."""
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor):
        return "the filesystem root"
    with contextlib.suppress(RuntimeError, KeyError):
        if path == Path.home().resolve():
            return "your home folder"
    if path == cwd:
        return "the current folder"
    if path in cwd.parents:
        return "a folder above the current one"
    return None


def check_output(path: str | Path, stage: str) -> Path:
    """``path`` as an output of ``stage`` (resolved), or OutputError saying why it may not be:
    empty or root-like, a file, another stage's output, or a folder holding what ``stage``
    did not write. Writes nothing."""
    spec = _stage(stage)
    text = str(path)
    if not text.strip():
        raise OutputError(f"{spec.key} is empty: name the folder `codegpt {stage}` should write")
    if text.startswith("~"):  # a folder literally named "~" is one `rm -rf ~` away from a loss
        raise OutputError(f"{spec.key}={text} starts with '~', which codegpt does not expand: "
                          "give the path without it (your shell expands a bare ~/...)")
    resolved = Path(text).resolve()
    why = _protected(resolved)
    if why:
        raise OutputError(f"{spec.key}={text} is {why}: `codegpt {stage}` needs a folder of its "
                          "own (for example a new folder under runs/)")
    if resolved.exists() and not resolved.is_dir():
        raise OutputError(f"{spec.key}={text} is a file, not a folder: `codegpt {stage}` writes "
                          "a folder; choose another path")
    above = next(p for p in resolved.parents if p.exists())
    if not above.is_dir():
        raise OutputError(f"{spec.key}={text} lies under {above}, which is a file, not a "
                          "folder; choose another path")
    if resolved.is_dir():
        _check_existing(resolved, spec, text)
    return resolved


def _check_existing(folder: Path, spec: Stage, text: str) -> None:
    names = sorted(os.listdir(folder))
    if not names:
        return
    marker = read_marker(folder)
    if marker is not None and marker.get("stage") != spec.command:
        what = (f"the output of `codegpt {marker['stage']}`" if marker.get("stage")
                else f"a folder with an unreadable {MARKER}")
        raise OutputError(f"{spec.key}={text} is {what}; `codegpt {spec.command}` will not "
                          "write into it: choose another folder")
    if marker is None:
        for other, kind in STAGES.items():
            if other != spec.command and kind.legacy(folder) and not spec.legacy(folder):
                raise OutputError(f"{spec.key}={text} holds the output of `codegpt {other}`; "
                                  f"`codegpt {spec.command}` will not write into it: choose "
                                  "another folder")
        if not spec.legacy(folder):
            raise OutputError(_strangers_message(folder, names, spec, text, mine=False))
    strangers = [n for n in names if not spec.owns(n)]
    if strangers and spec.command not in IN_PLACE:
        raise OutputError(_strangers_message(folder, strangers, spec, text, mine=True))


def _strangers_message(folder: Path, names: list[str], spec: Stage, text: str,
                       mine: bool) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    stage_dirs = [n for n in names if (folder / n / MARKER).is_file()]
    if stage_dirs:
        return (f"{spec.key}={text} is a pipeline folder (it holds {', '.join(stage_dirs[:4])}): "
                f"give `codegpt {spec.command}` a folder of its own, e.g. "
                f"{os.path.join(text, spec.folder)}")
    if mine:
        return (f"{spec.key}={text} is an earlier output of `codegpt {spec.command}` but also "
                f"holds {shown}, which it did not write; replacing the folder would delete "
                "them: move them out, or choose another folder")
    return (f"{spec.key}={text} already holds files codegpt did not write ({shown}); "
            f"`codegpt {spec.command}` only writes into a new or empty folder or its own "
            "earlier output: choose another folder")


# they keep their folder's files
IN_PLACE = ("prep", "train", *(eval_command(name) for name in (*BENCHMARKS, "infilling")),
            "reference")


# --- the lock ------------------------------------------------------------------------------------

def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_record(command: str) -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start_ticks": _start_ticks(pid), "command": command, "since": _now(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": _restart_count(os.environ.get("SLURM_RESTART_COUNT"))}


def _restart_count(value: object) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def holder_alive(holder: dict) -> bool | None:
    """Whether the process that wrote a lock still runs: None when it cannot be told (another
    host, and not an earlier incarnation of this requeued Slurm job)."""
    job = os.environ.get("SLURM_JOB_ID")
    if (job and holder.get("slurm_job_id") == job and _restart_count(
            holder.get("slurm_restart_count")) < _restart_count(os.environ.get(
                "SLURM_RESTART_COUNT"))):
        return False  # Slurm ended the earlier incarnation before it requeued the job
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    ticks = holder.get("start_ticks")
    return not (ticks and _start_ticks(pid) and ticks != _start_ticks(pid))


class OutputLock:
    """A lock file beside ``out`` that only one live run holds at a time.

    Taken with a hard link from a complete temporary file, so the lock never exists half
    written and two takers can never both succeed (also on NFS)."""

    def __init__(self, out: Path, command: str):
        self.out, self.command = out, command
        self.path = lock_path(out)
        self.held = False

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = _holder_record(self.command)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
            raise LockError(f"could not take the lock {self.path} (it keeps changing hands)")
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text()
            holder = json.loads(text)
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            holder, text = {}, None
        alive = holder_alive(holder) if holder else False
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} "
               f"(`codegpt {holder.get('command')}`, since {holder.get('since')})"
               if holder else "an unreadable lock")
        if alive:
            raise LockError(f"{self.out} is being written by another run: {who}; wait for it to "
                            f"finish or stop it, or choose another {_stage(self.command).key}")
        if alive is None:
            raise LockError(f"{self.out} is locked by {who}, on another machine, which codegpt "
                            f"cannot check from here; if that run has ended, delete "
                            f"{self.path} and run again")
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if text is not None and aside.read_text() != text:  # taken meanwhile: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                return
            log.warning("taking over the lock of %s from %s, which is no longer running",
                        self.out, who)
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- full disks ----------------------------------------------------------------------------------

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ENOSPC/EDQUOT, the message libraries
    that wrap it give, or (given the ``folder`` written to, checked before anything is cleaned
    up) any failure of a write that left less than 1 MiB free there: torch's writers report a
    full disk only as an "iostream error"."""
    first, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError)
                                              and exc.errno in DISK_FULL_ERRNOS):
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return (folder is not None and not isinstance(first, CodegptError)
            and _free_bytes(folder) < 1 << 20)


def _free_bytes(folder: Path) -> int:
    for p in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return 1 << 62


def disk_full_error(stage: str, out: Path, exc: BaseException, kept: str) -> DiskFullError:
    where = getattr(exc, "filename", None) or out
    return DiskFullError(f"no space left on device: `codegpt {stage}` could not write {where}; "
                         f"{kept}; free some space and run it again")


# --- writing ----------------------------------------------------------------------------------

def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # a file, or a folder that would not go
        with contextlib.suppress(OSError):
            path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_leftovers(out: Path) -> None:
    """Staging and replaced folders of earlier runs of this output that were killed: ours
    (they hold our marker), and nobody else's (we hold the output's lock)."""
    for prefix in (STAGING, REPLACED):
        for leftover in out.parent.glob(f".{out.name}{prefix}*"):
            if leftover.is_dir() and (leftover / MARKER).is_file():
                log.warning("removing %s, left by an earlier run that did not finish", leftover)
                _remove_tree(leftover)


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete ``staging`` folder at ``out``; the folder it replaces (already checked to
    be this stage's own output) is deleted only after that."""
    if not out.exists():
        os.rename(staging, out)
        return
    if _exchange(staging, out):
        _remove_tree(staging)  # now the previous output
        return
    old = out.with_name(f".{out.name}{REPLACED}{os.getpid()}")
    os.rename(out, old)
    os.rename(staging, out)
    _remove_tree(old)


@contextlib.contextmanager
def writing_aside(out: str | Path, stage: str) -> Iterator[Path]:
    """Write ``stage``'s output into a staging folder beside ``out`` (yielded) and, when the
    block ends without error, mark it complete and swap it in. On any error the staging folder
    is removed and the previous output at ``out`` is untouched; a full disk becomes one line."""
    out = check_output(out, stage)
    with _parents_made(out), OutputLock(out, stage):
        check_output(out, stage)  # again, now that no other run can change it
        _remove_leftovers(out)
        staging = out.with_name(f".{out.name}{STAGING}{os.getpid()}")
        _remove_tree(staging)
        try:
            staging.mkdir()
            write_marker(staging, stage, "running")
            yield staging
            write_marker(staging, stage, "complete", all_files(staging))
            swap_in(staging, out)
        except BaseException as e:
            _remove_tree(staging)
            kept = ("the previous output there is unchanged" if out.exists()
                    else "nothing was left behind")
            if isinstance(e, Exception) and is_disk_full(e, out.parent):
                raise disk_full_error(stage, out, e, kept) from e
            raise


class InPlace:
    """An output folder a resumable stage writes in place; ``complete(files)`` marks it done
    (``files``: absolute paths, or paths relative to the folder)."""

    def __init__(self, folder: Path, stage: str):
        self.folder, self.stage = folder, stage

    def complete(self, files: Iterable[str | Path] = (), **extra) -> None:
        rel = [str(Path(f).resolve().relative_to(self.folder)) if Path(f).is_absolute()
               else str(f) for f in files]  # relative names are the folder's
        write_marker(self.folder, self.stage, "complete", rel, **extra)


@contextlib.contextmanager
def writing_in_place(out: str | Path, stage: str, cleanup: Callable[[Path], None] | None = None
                     ) -> Iterator[InPlace]:
    """Lock ``out`` for ``stage``, mark it running, and yield it; the block calls
    ``complete(...)`` when the output is whole. On an error ``cleanup`` removes the stage's
    temporary files; then, if the run changed anything in the folder, the marker says failed
    (so the next stage refuses it), and if it changed nothing (bad input refused before any
    work) the folder is as it was: its marker restored, or the folder removed if this run made
    it. A full disk becomes one line."""
    out = check_output(out, stage)
    with _parents_made(out), OutputLock(out, stage):
        check_output(out, stage)
        created = not out.exists()
        out.mkdir(exist_ok=True)
        marker_before = (out / MARKER).read_bytes() if (out / MARKER).is_file() else None
        files_before = _snapshot(out)
        place = InPlace(out, stage)
        try:
            write_marker(out, stage, "running")
            yield place
        except BaseException as e:
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    cleanup(out)
            full = isinstance(e, Exception) and is_disk_full(e, out)
            with contextlib.suppress(Exception):
                if _snapshot(out) == files_before:  # nothing written: leave it as it was
                    if created:
                        _remove_tree(out)
                    elif marker_before is None:
                        (out / MARKER).unlink(missing_ok=True)
                    else:
                        atomic_write_bytes(out / MARKER, marker_before)
                elif isinstance(e, Exception):
                    write_marker(out, stage, "failed",
                                 error="disk full" if full else type(e).__name__)
            if full:
                raise disk_full_error(stage, out, e, "what it completed before is kept") from e
            raise


@contextlib.contextmanager
def _parents_made(out: Path) -> Iterator[None]:
    """Make ``out``'s missing parent folders; if the block fails, remove those of them that are
    still empty (after the lock beside ``out`` is gone), deepest first, so a refused or failed
    run that left nothing leaves no empty folders either. Never a folder it did not make."""
    made = []
    parent = out.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``folder`` but the marker."""
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    out.pop(MARKER, None)
    return out


def remove_temporary_files(folder: Path, patterns: Iterable[str] = ("*.tmp", ".*.tmp*")) -> None:
    """Temporary files (``*.tmp``, ``.NAME.tmpPID``) a killed or failed write left in ``folder``
    and below: ours by name, and never a reader's input."""
    for pattern in patterns:
        for p in folder.rglob(pattern):
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()

