"""A Slurm cluster for the tests marked ``slurm``: the one-node cluster of
``scripts/slurm/local-cluster.sh``, started for the session in a folder of its own, or an
existing cluster the user names.

On an existing cluster, ``SLURM_PARTITION=NAME pytest -m slurm --basetemp=SHARED/tmp`` submits
to that partition with the usual ``SLURM_CONF``; the test folders must be on a file system
its compute nodes see (``--basetemp``). Nothing is installed or started then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm" / "local-cluster.sh"
SKIP_CODE = 77  # local-cluster.sh: cannot start here (not root, no packages)
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
        "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
RELEASE_AFTER = 5  # seconds a requeued job stays held before the tests release it


class CannotStart(Exception):
    """The local cluster cannot run on this machine (the reason is the message)."""


@dataclass
class Slurm:
    """Client commands against one cluster."""

    env: dict
    partition: str | None
    folder: Path | None = None  # the local cluster's folder; None for an existing cluster
    jobs: list[str] = field(default_factory=list)  # every job the tests submitted

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def sbatch(self, *args: str, cwd: Path = REPO, env: dict | None = None) -> str:
        part = ["--partition", self.partition] if self.partition else []
        proc = subprocess.run(["sbatch", "--parsable", *part, *args], cwd=cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr}")
        job = proc.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def job(self, job: str) -> dict:
        """``scontrol show job``'s fields (of an array's first element), {} once it is gone."""
        proc = subprocess.run(["scontrol", "show", "job", "--oneliner", job], env=self.env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not proc.stdout.strip():
            return {}
        line = proc.stdout.splitlines()[0]
        return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)

    def history(self, job: str) -> list[dict]:
        """Every incarnation of ``job`` in the accounting (``sacct --duplicates``), oldest
        first: JobID, State, ExitCode, Start, End."""
        keys = ["JobID", "State", "ExitCode", "Start", "End"]
        out = self.run("sacct", "-n", "-P", "-X", "--duplicates", "-j", job,
                       "-o", ",".join(keys))
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]

    def queued(self, *names_or_ids: str) -> list[str]:
        """Ids (array tasks included) of jobs still pending or running, among these."""
        out = self.run("squeue", "-h", "-r", "-o", "%i %j %T")
        rows = [line.split() for line in out.splitlines()]
        return [r[0] for r in rows
                if any(x in (r[0], r[0].split("_")[0], r[1]) for x in names_or_ids)]

    def final_state(self, job: str, timeout: float = 60) -> str:
        """The state the accounting gives an ended job (or array task) once it has the
        record: slurmctld sends it to slurmdbd a moment after the job ends."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.history(job)
            if hist and hist[-1]["State"].split()[0] in DONE:
                return hist[-1]["State"].split()[0]
            time.sleep(0.5)
        raise TimeoutError(f"no final state of job {job} in sacct after {timeout}s")

    def wait(self, job: str, timeout: float, release: bool = True) -> str:
        """Wait until ``job`` ends; returns its final state. A requeued job is held for two
        minutes (its begin time) before it may start again: with ``release`` the wait is cut
        short (``scontrol update StartTime=now``), as an impatient user would, but only
        ``RELEASE_AFTER`` seconds after the requeue. slurmd revokes the old incarnation's
        credential with a one-second clock: a new one issued within the same second is
        refused ("Job credential revoked") and the job ends FAILED."""
        deadline = time.time() + timeout
        held_since = None
        while time.time() < deadline:
            info = self.job(job)
            state = info.get("JobState")
            if state in DONE:
                return state
            if not info:  # out of slurmctld's memory: ask the accounting
                hist = self.history(job)
                if hist and hist[-1]["State"].split()[0] in DONE:
                    return hist[-1]["State"].split()[0]
            if state == "PENDING" and info.get("Reason") == "BeginTime":
                held_since = held_since or time.time()
                if release and time.time() - held_since >= RELEASE_AFTER:
                    self.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
            else:
                held_since = None
            time.sleep(1)
        raise TimeoutError(f"job {job} still {self.job(job).get('JobState')} after {timeout}s")

    def cancel_ours(self) -> None:
        for job in self.jobs:
            self.run("scancel", job, check=False)


def start(folder: Path) -> Slurm:
    """The cluster for this session: an existing one if SLURM_PARTITION is set, else the local
    one, started in ``folder``. Raises CannotStart where it cannot run here."""
    if os.environ.get("SLURM_PARTITION"):
        if not shutil.which("sbatch"):
            raise CannotStart("SLURM_PARTITION is set but sbatch is not on PATH")
        return Slurm(dict(os.environ), os.environ["SLURM_PARTITION"])
    if os.geteuid() != 0:
        raise CannotStart("the local Slurm cluster needs root (to install and run slurmd); "
                          "or set SLURM_PARTITION to test against an existing cluster")
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == SKIP_CODE:
        raise CannotStart(proc.stderr.strip())
    if proc.returncode != 0:  # it should run here: a failure, not a skip
        stop(folder)
        raise RuntimeError(f"local Slurm cluster did not start:\n{proc.stderr}")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"),
           "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    env.pop("SLURM_PARTITION", None)
    return Slurm(env, None, folder)


def stop(folder: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"local Slurm cluster did not stop cleanly:\n{proc.stderr}")
