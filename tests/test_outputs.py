"""What commands may write and delete (codegpt.outputs): refused output paths, write-aside
replacement, completion markers, locks and full disks.

The table test runs every command that writes against the paths a user mistypes — the empty
path, ``.``, another stage's folder, a folder of unrelated files and a whole pipeline folder —
and checks that each is refused with one line and that nothing anywhere changed (a hash of the
whole tree before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from codegpt import outputs
from codegpt.cli import main
from codegpt.errors import IncompleteError, LockError, OutputError
from codegpt.outputs import (MARKER, OutputLock, check_output, lock_path, output_state,
                             read_marker, require_complete, writing_aside, writing_in_place)

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ("colorsys.py", "string.py", "textwrap.py", "fnmatch.py", "shlex.py", "calendar.py",
           "bisect.py", "heapq.py", "keyword.py", "graphlib.py", "glob.py", "copy.py")


def tree_hash(root: Path) -> str:
    """Every folder and file under ``root`` (names, and the files' bytes)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        h.update(f"d {rel}\n".encode())
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(f"f {rel}/{name} ".encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def run(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def corpus(root: Path) -> Path:
    """A few standard-library modules as a local source of three 'repositories'."""
    src = root / "src"
    for i, name in enumerate(MODULES):
        dest = src / f"pkg{i % 3}" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / name, dest)
    return src


def samples_file(path: Path) -> Path:
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"})
                    + "\n")
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A pipeline folder with every stage's real output: data, tokenizer, tokens, train (with
    its loss.png), sft-data, humaneval, export and report, all written by the commands."""
    root = tmp_path_factory.mktemp("outputs")
    src = corpus(root)
    pipe = root / "pipe"
    steps = [
        ["prep", "default", f"sources=[{{type: local, roots: [{src}]}}]",
         f"out_dir={pipe / 'data'}"],
        ["tokenizer", "default", f"data_dir={pipe / 'data'}", f"out_dir={pipe / 'tokenizer'}",
         "vocab_size=400", "sample_mb=1"],
        ["tokenize", "default", f"data_dir={pipe / 'data'}", f"tokenizer={pipe / 'tokenizer'}",
         f"out_dir={pipe / 'tokens'}", "val_fraction=0.1", "tokens_per_shard=20000"],
        ["train", "smoke", f"data_dir={pipe / 'tokens'}", f"tokenizer={pipe / 'tokenizer'}",
         f"out_dir={pipe / 'train'}", "run.max_steps=2", "data.val_every=0",
         "model.block_size=64", "batch.global_batch_tokens=256"],
        ["plot", pipe / "train"],
        ["sft-data", "default", f"data_dir={pipe / 'data'}", f"out_dir={pipe / 'sft-data'}"],
        ["eval", "humaneval", "--samples", samples_file(root / "samples.jsonl"),
         "--allow-missing", "--out", pipe / "humaneval"],
        ["export", "--checkpoint", pipe / "train", "--tokenizer", pipe / "tokenizer", "--out",
         pipe / "export"],
        ["report", pipe],
    ]
    for args in steps:
        assert main([str(a) for a in args]) == 0, args
    return {"root": root, "src": src, "pipe": pipe, "samples": root / "samples.jsonl"}


def command(name: str, out: str, p: dict) -> list:
    """``name``'s command line with ``out`` as its output, every input real."""
    pipe = p["pipe"]
    return {
        "prep": ["prep", "default", f"sources=[{{type: local, roots: [{p['src']}]}}]",
                 f"out_dir={out}"],
        "tokenizer": ["tokenizer", "default", f"data_dir={pipe / 'data'}", f"out_dir={out}",
                      "vocab_size=400", "sample_mb=1"],
        "tokenize": ["tokenize", "default", f"data_dir={pipe / 'data'}",
                     f"tokenizer={pipe / 'tokenizer'}", f"out_dir={out}"],
        "sft-data": ["sft-data", "default", f"data_dir={pipe / 'data'}", f"out_dir={out}"],
        "train": ["train", "smoke", f"data_dir={pipe / 'tokens'}", f"out_dir={out}",
                  "run.max_steps=2", "model.block_size=64", "batch.global_batch_tokens=256"],
        "reference": ["reference", "cpu", f"out_dir={out}"],
        "eval humaneval": ["eval", "humaneval", "--samples", p["samples"], "--allow-missing",
                           "--out", out],
        "export": ["export", "--checkpoint", pipe / "train", "--tokenizer", pipe / "tokenizer",
                   "--out", out],
        "report": ["report", pipe, "--out", out],
        "plot": ["plot", pipe / "train", "--out", out],
    }[name]


# another stage's output for each command (plot writes a file: another stage's file)
OTHER = {"prep": "tokens", "tokenizer": "tokens", "tokenize": "train", "sft-data": "tokenizer",
         "train": "tokens", "reference": "train", "eval humaneval": "train", "export": "tokens",
         "report": "train", "plot": "tokens/meta.json"}
CASES = ("empty", "current folder", "another stage's output", "unrelated files",
         "pipeline folder")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(OTHER))
def test_a_command_never_writes_where_it_may_not(name, case, pipeline, capsys, monkeypatch):
    root, pipe = pipeline["root"], pipeline["pipe"]
    unrelated = root / "photos"
    unrelated.mkdir(exist_ok=True)
    (unrelated / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (unrelated / "notes.txt").write_text("keep me\n")
    out = {"empty": "", "current folder": ".", "another stage's output": str(pipe / OTHER[name]),
           "unrelated files": str(unrelated), "pipeline folder": str(pipe)}[case]
    monkeypatch.chdir(root)
    before = tree_hash(root)
    code, err = run(command(name, out, pipeline), capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert tree_hash(root) == before, f"{name} changed the tree for {case!r}: {err}"


def test_every_stage_output_is_marked_complete(pipeline):
    pipe = pipeline["pipe"]
    stages = {"data": "prep", "tokenizer": "tokenizer", "tokens": "tokenize", "train": "train",
              "sft-data": "sft-data", "humaneval": "eval humaneval", "export": "export",
              "report": "report"}
    for folder, stage in stages.items():
        assert output_state(pipe / folder, stage) == "complete", folder
        marker = read_marker(pipe / folder)
        assert marker["files"], folder
    assert not [p for p in pipeline["root"].rglob("*") if outputs.STAGING in p.name
                or p.name.endswith(outputs.LOCK_SUFFIX)]


# --- paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "  ", "/", ".", "..", "./", "~", "~/runs/x", "a/../.",
                                  "/.."])
def test_root_like_paths_are_refused(path, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(OutputError):
        check_output(path, "tokenize")


def test_the_home_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(OutputError, match="home folder"):
        check_output(str(tmp_path), "export")


def test_a_file_is_refused_as_a_folder(tmp_path):
    (tmp_path / "x").write_text("data")
    with pytest.raises(OutputError, match="is a file"):
        check_output(tmp_path / "x", "tokenizer")
    with pytest.raises(OutputError, match="which is a file"):
        check_output(tmp_path / "x" / "sub" / "deeper", "tokenizer")


def test_new_and_empty_folders_and_the_stages_own_output_are_accepted(tmp_path):
    assert check_output(tmp_path / "new" / "deeper", "tokenize") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "tokenize")
    with writing_aside(tmp_path / "tok", "tokenize") as staging:
        (staging / "meta.json").write_text("{}")
    check_output(tmp_path / "tok", "tokenize")
    with pytest.raises(OutputError, match="output of `codegpt tokenize`"):
        check_output(tmp_path / "tok", "export")


def test_a_stray_file_in_an_earlier_output_is_never_replaced(tmp_path):
    with writing_aside(tmp_path / "tok", "tokenize") as staging:
        (staging / "meta.json").write_text("{}")
    (tmp_path / "tok" / "my-notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="my-notes.txt"):
        with writing_aside(tmp_path / "tok", "tokenize"):
            pass
    assert (tmp_path / "tok" / "my-notes.txt").read_text() == "mine"


def test_an_unmarked_older_output_of_the_same_stage_is_recognised(tmp_path):
    old = tmp_path / "tokens"
    (old / "train").mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({"format": "codegpt-tokens-v1"}))
    check_output(old, "tokenize")
    with pytest.raises(OutputError, match="output of `codegpt tokenize`"):
        check_output(old, "sft-data")


# --- write aside, then swap ------------------------------------------------------------------------

def test_a_failed_rewrite_leaves_the_previous_output_whole(tmp_path):
    out = tmp_path / "out"
    with writing_aside(out, "tokenize") as staging:
        (staging / "meta.json").write_text("old")
    before = tree_hash(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with writing_aside(out, "tokenize") as staging:
            (staging / "meta.json").write_text("new")
            raise RuntimeError("boom")
    assert tree_hash(tmp_path) == before  # no staging folder, no lock, the old output
    with writing_aside(out, "tokenize") as staging:
        (staging / "meta.json").write_text("new")
    assert (out / "meta.json").read_text() == "new"
    require_complete(out, "tokenize")


def test_a_tokenize_rerun_that_fails_keeps_the_shards_it_replaces(pipeline, tmp_path,
                                                                   monkeypatch, capsys):
    """The previous shards and their meta.json stay whole and readable when a rerun dies."""
    from codegpt.tokenizer import encode
    from codegpt.tokenizer.shards import SequenceIndex

    pipe = pipeline["pipe"]
    out = tmp_path / "tokens"
    args = ["tokenize", "default", f"data_dir={pipe / 'data'}",
            f"tokenizer={pipe / 'tokenizer'}", f"out_dir={out}", "tokens_per_shard=5000"]
    assert run(args, capsys)[0] == 0
    before = tree_hash(tmp_path)
    calls = []

    def dying_add(self, ids):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it mid-write
        return original(self, ids)

    original = encode.ShardWriter.add
    monkeypatch.setattr(encode.ShardWriter, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["seed=1"])
    assert tree_hash(tmp_path) == before
    assert len(SequenceIndex.open(out, "train", 32)) > 0


def test_a_killed_rewrite_is_cleaned_up_by_the_next_run(tmp_path):
    """A staging folder of a run that was killed (as SIGKILL leaves it) is removed next time."""
    out = tmp_path / "out"
    stale = tmp_path / f".out{outputs.STAGING}99999"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"stage": "tokenize", "status": "running"}))
    (stale / "half.bin").write_bytes(b"\0" * 10)
    with writing_aside(out, "tokenize") as staging:
        (staging / "meta.json").write_text("{}")
    assert not stale.exists() and (out / "meta.json").is_file()


def test_someone_elses_hidden_folder_beside_the_output_is_left_alone(tmp_path):
    theirs = tmp_path / f".out{outputs.STAGING}123"
    theirs.mkdir()
    (theirs / "file").write_text("not codegpt's")
    with writing_aside(tmp_path / "out", "tokenize") as staging:
        (staging / "meta.json").write_text("{}")
    assert (theirs / "file").read_text() == "not codegpt's"


# --- completion markers ---------------------------------------------------------------------------

@pytest.fixture
def copy_of(pipeline, tmp_path):
    def copy(folder: str) -> Path:
        dest = tmp_path / folder
        shutil.copytree(pipeline["pipe"] / folder, dest)
        return dest
    return copy


def test_a_prep_that_did_not_finish_is_refused_by_every_reader(copy_of, pipeline, tmp_path,
                                                              capsys):
    data = copy_of("data")
    marker = read_marker(data)
    marker["status"] = "running"  # what a killed prep leaves
    (data / MARKER).write_text(json.dumps(marker))
    tok = pipeline["pipe"] / "tokenizer"
    for args in (["tokenizer", "default", f"data_dir={data}", f"out_dir={tmp_path / 't'}"],
                 ["tokenize", "default", f"data_dir={data}", f"tokenizer={tok}",
                  f"out_dir={tmp_path / 'k'}"],
                 ["sft-data", "default", f"data_dir={data / 'data'}",
                  f"out_dir={tmp_path / 's'}"]):
        code, err = run(args, capsys)
        assert code == 2 and "not a complete output of `codegpt prep`" in err, err
        assert "run `codegpt prep` again" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "k").exists()


@pytest.mark.parametrize("damage", ["a parquet shard deleted", "stats.json deleted",
                                    "a shard cut short"])
def test_a_prep_output_altered_since_it_completed_is_refused(damage, copy_of, tmp_path,
                                                             capsys):
    data = copy_of("data")
    shard = sorted((data / "data").glob("*.parquet"))[0]
    if damage == "a parquet shard deleted":
        shard.unlink()
    elif damage == "stats.json deleted":
        (data / "stats.json").unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-10])
    code, err = run(["tokenizer", "default", f"data_dir={data}", f"out_dir={tmp_path / 't'}"],
                    capsys)
    assert code == 2 and "not a complete output of `codegpt prep`" in err, err


def test_an_unmarked_prep_output_without_stats_is_refused(copy_of, tmp_path, capsys):
    """Folders from before markers: stats.json was written last."""
    data = copy_of("data")
    (data / MARKER).unlink()
    (data / "stats.json").unlink()
    code, err = run(["tokenizer", "default", f"data_dir={data}", f"out_dir={tmp_path / 't'}"],
                    capsys)
    assert code == 2 and "stats.json" in err, err


def test_a_prep_that_fails_marks_its_output_failed(pipeline, tmp_path, monkeypatch, capsys):
    from data_prep import pipeline as prep_pipeline

    def broken_summary(out, cfg):
        raise RuntimeError("accounting error")

    monkeypatch.setattr(prep_pipeline, "summarize", broken_summary)
    out = tmp_path / "data"
    with pytest.raises(RuntimeError):
        main(command("prep", str(out), pipeline) + ["executor.workers=1"])
    assert read_marker(out)["status"] == "failed"
    assert output_state(out, "prep") == "incomplete"
    assert not lock_path(out).exists()
    with pytest.raises(IncompleteError, match="failed there"):
        require_complete(out, "prep")


def test_damaged_token_shards_are_refused_before_training(copy_of, capsys, tmp_path):
    tokens = copy_of("tokens")
    (tokens / "val" / "shard_000000.bin").unlink()
    code, err = run(["train", "smoke", f"data_dir={tokens}", f"out_dir={tmp_path / 'r'}"],
                    capsys)
    assert code == 2 and "not a complete output of `codegpt tokenize`" in err, err


def test_the_report_shows_a_stage_that_did_not_finish(copy_of, pipeline, tmp_path):
    from codegpt.report import read_run

    run_dir = tmp_path / "run"
    for folder in ("data", "train"):
        shutil.copytree(pipeline["pipe"] / folder, run_dir / folder)
    marker = read_marker(run_dir / "data")
    marker["status"] = "running"
    (run_dir / "data" / MARKER).write_text(json.dumps(marker))
    run = read_run(run_dir)
    assert "did not finish" in run.incomplete["data"]
    assert run.data is None  # an earlier run's stats.json is not shown as this one's
    assert "train" not in run.incomplete
    html = (Path(main(["report", str(run_dir)]) == 0 and run_dir / "report" / "report.html")
            .read_text())
    assert "incomplete" in html and "did not finish" in html


# --- locks ---------------------------------------------------------------------------------------

def holder(pid: int, **kw) -> dict:
    return {**outputs._holder_record("train"), "pid": pid, **kw}


def test_a_live_holder_refuses_a_second_run_naming_its_pid_and_host(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(tmp_path / "run").write_text(json.dumps(
            holder(sleeper.pid, start_ticks=outputs._start_ticks(sleeper.pid))))
        with pytest.raises(LockError) as e:
            OutputLock(tmp_path / "run", "train").acquire()
        assert f"pid {sleeper.pid}" in str(e.value) and socket.gethostname() in str(e.value)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("why", ["the pid is gone", "the pid is another process now",
                                 "the machine rebooted", "the same Slurm job, requeued",
                                 "half written"])
def test_a_stale_lock_is_taken_over(why, tmp_path, monkeypatch):
    path = lock_path(tmp_path / "run")
    if why == "the pid is gone":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        record = holder(dead.pid)
    elif why == "the pid is another process now":
        record = holder(os.getppid(), start_ticks="1")
    elif why == "the machine rebooted":
        record = holder(os.getppid(), boot_id="another-boot")
    elif why == "the same Slurm job, requeued":
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        record = holder(os.getppid(), host="node-that-was-preempted", slurm_job_id="4242",
                        slurm_restart_count=0)
    else:
        record = None
    path.write_text(json.dumps(record) if record else "")
    with OutputLock(tmp_path / "run", "train"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_from_another_machine_is_refused_with_what_to_do(tmp_path, monkeypatch):
    lock_path(tmp_path / "run").write_text(json.dumps(holder(1234, host="other-node")))
    with pytest.raises(LockError, match="another machine.*delete"):
        OutputLock(tmp_path / "run", "train").acquire()
    # the same incarnation of a Slurm job (two runs in one allocation) is not a requeue
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock_path(tmp_path / "run").write_text(json.dumps(
        holder(1234, host="other-node", slurm_job_id="77", slurm_restart_count=0)))
    with pytest.raises(LockError, match="another machine"):
        OutputLock(tmp_path / "run", "train").acquire()


@pytest.mark.slow
def test_two_trainings_in_one_folder(pipeline, tmp_path):
    """A second `codegpt train` into a folder a live one is writing is refused with the holder's
    pid and host; once the first is killed (SIGKILL: its lock stays), a run takes over the
    stale lock and resumes from its checkpoint."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "codegpt", "train", "smoke",
            f"data_dir={pipeline['pipe'] / 'tokens'}", f"out_dir={out}", "run.max_steps=100000",
            "model.block_size=64", "batch.global_batch_tokens=256", "checkpoint.every=5",
            "data.val_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step_0000005").is_dir():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock_path(out).exists()  # a SIGKILL leaves it behind
    third = subprocess.run(args[:-5] + ["run.max_steps=12", "model.block_size=64",
                                        "batch.global_batch_tokens=256", "checkpoint.every=5",
                                        "data.val_every=0"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert third.returncode == 0, third.stderr
    assert "no longer running" in third.stderr and "resumed from" in third.stderr
    assert output_state(out, "train") == "complete" and not lock_path(out).exists()


def test_in_place_output_is_locked_and_marked(tmp_path):
    out = tmp_path / "run"
    with writing_in_place(out, "train") as place:
        assert read_marker(out)["status"] == "running" and lock_path(out).exists()
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            with writing_in_place(out, "train"):
                pass
        (out / "status.json").write_text("{}")
        place.complete(["status.json"])
    assert output_state(out, "train") == "complete" and not lock_path(out).exists()


# --- full disks ------------------------------------------------------------------------------------

def small_disk(path: Path, size: str) -> None:
    """A tmpfs of ``size`` at ``path`` (root only); skip elsewhere."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs to fill needs root")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def disk(tmp_path):
    mount = tmp_path / "disk"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_in_tokenize_is_one_line_and_keeps_the_previous_shards(pipeline, disk,
                                                                          capsys):
    small_disk(disk, "100k")
    pipe = pipeline["pipe"]
    out = disk / "tokens"
    args = ["tokenize", "default", f"data_dir={pipe / 'data'}", f"tokenizer={pipe / 'tokenizer'}",
            f"out_dir={out}", "tokens_per_shard=5000"]
    assert run(args + ["max_mb=0.01"], capsys)[0] == 0  # a small output fits
    before = tree_hash(disk)
    code, err = run(args, capsys)  # all of it does not
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    assert "codegpt tokenize" in lines[0] and str(out) in lines[0]
    assert tree_hash(disk) == before  # staging removed, previous output whole


def test_a_full_disk_in_training_keeps_the_last_checkpoint_and_says_so(pipeline, disk,
                                                                       capsys):
    small_disk(disk, "1200k")
    out = disk / "run"
    code, err = run(["train", "smoke", f"data_dir={pipeline['pipe'] / 'tokens'}",
                     f"out_dir={out}", "run.max_steps=400", "checkpoint.every=1",
                     "checkpoint.keep_last=100", "data.val_every=0", "model.block_size=64",
                     "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                     "batch.global_batch_tokens=256"], capsys)  # checkpoints of about 0.3 MB
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    assert "codegpt train" in lines[0]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == "disk full"
    from codegpt import checkpoint as cp

    saved = cp.list_checkpoints(out / "checkpoints")
    assert saved and status["last_checkpoint"].endswith(saved[-1].name)
    cp.verify(saved[-1])
    assert not list((out / "checkpoints").glob(".tmp_*"))
    assert read_marker(out)["status"] == "failed" and not lock_path(out).exists()


def test_a_full_disk_in_prep_is_one_line(pipeline, disk, capsys):
    small_disk(disk, "150k")
    out = disk / "data"
    code, err = run(command("prep", str(out), pipeline), capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    assert "codegpt prep" in lines[0]
    assert not [p for p in out.rglob("*.tmp*")]


def test_a_run_refused_before_it_writes_leaves_a_complete_output_as_it_was(pipeline, tmp_path,
                                                                           capsys):
    """Bad input found after the folder is locked (a changed architecture on resume, a prep
    config that differs from the folder's) changes nothing: the marker still says complete."""
    train = tmp_path / "train"
    shutil.copytree(pipeline["pipe"] / "train", train)
    before = tree_hash(tmp_path)
    code, err = run(command("train", str(train), pipeline) + ["model.n_layer=3"], capsys)
    assert code == 2 and "model.n_layer" in err, err
    assert tree_hash(tmp_path) == before and output_state(train, "train") == "complete"

    data = tmp_path / "data"
    shutil.copytree(pipeline["pipe"] / "data", data)
    before = tree_hash(tmp_path)
    code, err = run(command("prep", str(data), pipeline) + ["filters.max_line_length=500"],
                    capsys)
    assert code == 2 and "different config" in err, err
    assert tree_hash(tmp_path) == before and output_state(data, "prep") == "complete"

    code, err = run(["eval", "humaneval", "--checkpoint", pipeline["pipe"] / "train",
                     "--tokenizer", tmp_path, "--out", tmp_path / "eval"], capsys)
    assert code == 2 and not (tmp_path / "eval").exists(), err


def test_an_exported_folder_still_serves_as_a_tokenizer_folder(pipeline):
    from codegpt.tokenizer.bpe import load_tokenizer, tokenizer_hash

    pipe = pipeline["pipe"]
    assert tokenizer_hash(pipe / "export") == tokenizer_hash(pipe / "tokenizer")
    assert load_tokenizer(pipe / "export").get_vocab_size() == 400


@pytest.mark.parametrize("files", [["a.json"], {"a.json": "12"}, {"a.json": None}, "a.json"])
def test_a_marker_whose_files_are_not_names_and_sizes_is_incomplete_not_a_crash(tmp_path, files):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / MARKER).write_text(json.dumps({"format": 1, "stage": "report",
                                             "status": "complete", "files": files}))
    assert output_state(folder, "report") == "incomplete"
    assert "unknown form" in outputs.completion_problem(folder, "report")


@pytest.mark.parametrize("write", [outputs.writing_in_place, outputs.writing_aside])
def test_a_failed_run_leaves_no_folders_it_made_and_keeps_the_others(tmp_path, write):
    """The parent folders an output needed are made for it; a run that fails leaving nothing
    removes those it made (still empty), never one that was there before or holds anything."""
    stage = "eval humaneval" if write is outputs.writing_in_place else "report"
    with pytest.raises(RuntimeError):
        with write(tmp_path / "new" / "deeper" / "out", stage):
            raise RuntimeError("refused")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with write(tmp_path / "kept" / "made" / "out", stage):
            raise RuntimeError("refused")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "made").exists()
    with write(tmp_path / "fine" / "out", stage) as place:  # a finished run keeps its folders
        folder = place.folder if hasattr(place, "folder") else place
        (folder / "results.json").write_text("{}")
        if hasattr(place, "complete"):
            place.complete(["results.json"])
    assert (tmp_path / "fine" / "out" / "results.json").is_file()
