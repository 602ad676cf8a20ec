"""`codegpt prep` with executor.type=slurm through a real Slurm scheduler (the ``slurm``
fixture): the job arrays give the local executor's output, file for file; a task cancelled
mid-array is run again by the next submission, alone."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import REPO
from prep_compare import assert_same_output

pytestmark = [pytest.mark.cluster, pytest.mark.slurm]

TASKS = 4
CODEGPT = str(Path(sys.executable).parent / "codegpt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The standard library's packages, twice (54 MB, 3,200 files): a few seconds a task."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("stdlib")
    for copy in ("a", "b"):
        for pkg in sorted(stdlib.iterdir()):
            if pkg.is_dir() and pkg.name not in ("site-packages", "__pycache__"):
                shutil.copytree(pkg, root / copy / pkg.name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def prep_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["prep", str(REPO / "configs" / "data" / "default.yaml"), f"out_dir={out}",
            f"sources=[{{type: local, roots: [{corpus}]}}]", f"executor.tasks={TASKS}", *extra]


def prep(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`codegpt prep`, run as a user would: the virtualenv's command, the virtualenv not
    activated (not on PATH), so the jobs must find their Python environment themselves."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if Path(p).resolve() != Path(sys.executable).parent.resolve()]
    proc = subprocess.run([CODEGPT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {}),
                                            "PATH": os.pathsep.join(path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    prep(prep_args(corpus, out))
    return out


def our_jobs(out: Path) -> list[str]:
    return json.loads((out / "work" / "slurm_jobs.json").read_text())["jobs"]


def wait_until_gone(slurm, jobs: list[str], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while slurm.queued(*jobs):
        assert time.time() < deadline, slurm.run("squeue")
        time.sleep(0.5)


def submit(slurm, args: list[str]) -> list[str]:
    proc = prep(args, slurm.env)
    assert "submitted" in proc.stdout, proc.stdout + proc.stderr
    jobs = our_jobs(Path(args[2].split("=", 1)[1]))
    slurm.jobs.extend(jobs)
    return jobs


def test_prep_on_slurm_gives_the_local_output(slurm, corpus, local_run, tmp_path):
    out = tmp_path / "out"
    args = prep_args(corpus, out, "executor.type=slurm")
    jobs = submit(slurm, args)
    assert len(jobs) == 3  # filter, dedup plan, write: each an array, each after the one before
    again = prep(args, slurm.env)  # while they run: nothing submitted, nothing touched
    assert "still queued or running" in again.stderr and our_jobs(out) == jobs
    wait_until_gone(slurm, jobs)
    assert [slurm.final_state(j) for j in jobs] == ["COMPLETED"] * 3
    states = {h["JobID"]: h["State"] for j in jobs for h in slurm.history(j)}
    assert set(states.values()) == {"COMPLETED"}, states
    assert len([k for k in states if k.startswith(jobs[0] + "_")]) == TASKS
    done = prep(args, slurm.env)  # summarises; submits nothing
    assert "wrote" in done.stdout and our_jobs(out) == jobs
    assert_same_output(out, local_run)


def test_a_task_cancelled_mid_array_is_rerun_alone(slurm, corpus, local_run, tmp_path):
    out = tmp_path / "out"
    # one task at a time (sbatch --array=0-3%1), so that there is a running task to cancel
    args = prep_args(corpus, out, "executor.type=slurm", "executor.workers=1")
    first = submit(slurm, args)
    cancelled = None
    deadline = time.time() + 300
    while cancelled is None and slurm.queued(first[0]):
        assert time.time() < deadline
        running = slurm.run("squeue", "-h", "-r", "-j", first[0], "-t", "RUNNING", "-o", "%i")
        task = running.split()[0] if running.split() else None
        if task is not None and int(task.split("_")[1]) < TASKS - 1:
            slurm.run("scancel", task)
            # it may have finished just before: then try the next one
            while slurm.queued(task):
                time.sleep(0.2)
            if slurm.final_state(task) == "CANCELLED":
                cancelled = int(task.split("_")[1])
        time.sleep(0.2)
    assert cancelled is not None, "no task of the array could be cancelled while it ran"
    wait_until_gone(slurm, first)  # the jobs after it end too: their dependency cannot be met
    assert not (out / "stats.json").exists()
    staged = {p.name: p.stat().st_mtime_ns for p in (out / "work" / "staged").glob("*.parquet")}
    assert f"{cancelled:05d}.parquet" not in staged and len(staged) == TASKS - 1

    second = submit(slurm, args)
    assert json.loads((out / "logs" / "1_filter" / "ranks_to_run.json").read_text()) == [cancelled]
    wait_until_gone(slurm, second)
    assert [slurm.final_state(j) for j in second] == ["COMPLETED"] * 3
    filter_tasks = [h["JobID"] for h in slurm.history(second[0])]
    assert filter_tasks == [f"{second[0]}_0"]  # an array of the one task left
    for name, mtime in staged.items():  # the others were not run again
        assert (out / "work" / "staged" / name).stat().st_mtime_ns == mtime, name
    prep(args, slurm.env)
    assert_same_output(out, local_run)
