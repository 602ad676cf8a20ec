"""Data prep as Slurm job arrays: datatrove's Slurm executor, made right for a real ``sbatch``.

``executor.type: slurm`` submits the three jobs (filter, dedup plan, write) as job arrays, each
depending on the one before; a later ``codegpt prep`` with the same config summarises once
they are done, or submits again only the tasks without a completion marker (a cancelled or
failed array task, and what depends on it). Run against a real scheduler, datatrove's
``SlurmPipelineExecutor`` as configured here before got these wrong:

- ``partition`` was always written (ours defaulted to ``cpu``, which few clusters have): now
  only when set, else the cluster's default partition;
- ``--qos=normal`` was always written: a cluster without that QOS refuses the job. Only when set;
- the job ran ``launch_pickled_pipeline`` from whatever ``PATH`` the submitting shell had: from
  ``.venv/bin/codegpt prep`` without an activated virtualenv, "command not found" in every task.
  The job now puts the submitting interpreter's scripts folder first on its ``PATH``;
- a cancelled or failed array task left the jobs depending on it pending forever
  (``DependencyNeverSatisfied``): they now end (``--kill-on-invalid-dep=yes``);
- a second ``codegpt prep`` while the jobs still ran removed their temporary files and
  submitted them again: it now says which jobs are still queued and leaves them alone.

Bad ``executor.slurm`` values (an unknown option, a time Slurm cannot read, memory that is not a
whole number of GB) are refused by name before anything is submitted.
"""

from __future__ import annotations

import getpass
import inspect
import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

from datatrove.executor.slurm import SlurmPipelineExecutor

from codegpt.errors import ConfigError
from codegpt.outputs import atomic_write_json
from data_prep.config import ExecutorConfig
from data_prep.executor_options import check_options, whole

# SlurmPipelineExecutor arguments that make_executors sets from the rest of the config
SET_BY_CODEGPT = ("pipeline", "tasks", "workers", "depends", "depends_job_id", "logging_dir",
                  "job_name", "skip_completed")
DEFAULTS = {"time": "04:00:00", "cpus_per_task": 1, "mem_per_cpu_gb": 2, "partition": None,
            "qos": None}
SBATCH_DEFAULTS = {"kill-on-invalid-dep": "yes"}
JOBS_FILE = "slurm_jobs.json"  # in OUT/work: the job ids of the last submission

# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds
_NO_LIMIT = ("UNLIMITED", "INFINITE")
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|"
                   r"\d+-\d+:\d{1,2}:\d{1,2})$")


_VALUES = {
    "time": (lambda v: isinstance(v, str) and bool(_TIME.match(v) or v.upper() in _NO_LIMIT)
             or whole(0)[0](v), "a Slurm time limit: MINUTES, MINUTES:SECONDS, HH:MM:SS, D-HH, "
             "D-HH:MM or D-HH:MM:SS (0 or UNLIMITED: none)"),
    "cpus_per_task": whole(1),
    "mem_per_cpu_gb": whole(1, "a whole number of GB >= 1 (sbatch --mem-per-cpu)"),
    "gpus_per_task": whole(0),
    "nodes_per_task": whole(1),
    "tasks_per_job": whole(1),
    "max_array_size": (lambda v: whole(1)[0](v) or v == -1, "a whole number >= 1, or -1"),
    "partition": (lambda v: v is None or isinstance(v, str) and bool(v.strip()),
                  "a partition name (or null: the cluster's default)"),
    "qos": (lambda v: v is None or isinstance(v, str) and bool(v.strip()), "a QOS name or null"),
    "sbatch_args": (lambda v: isinstance(v, dict), "a mapping of sbatch options to values"),
    "srun_args": (lambda v: v is None or isinstance(v, dict), "a mapping of srun options"),
}


def slurm_options(ex: ExecutorConfig) -> dict:
    """The SlurmPipelineExecutor arguments of ``executor.slurm``, checked, with our defaults."""
    known = set(inspect.signature(SlurmPipelineExecutor.__init__).parameters) - {"self"}
    check_options("executor.slurm", ex.slurm, known=known, set_by_codegpt=SET_BY_CODEGPT,
                  values=_VALUES)
    opts = {**DEFAULTS, **ex.slurm}
    opts["time"] = str(opts["time"])
    opts["sbatch_args"] = {**SBATCH_DEFAULTS, **opts.get("sbatch_args", {})}
    if not any(opts.get(k) for k in ("env_command", "venv_path", "condaenv")):
        # the job runs datatrove's launch_pickled_pipeline of this very installation
        opts["env_command"] = f'export PATH="{sysconfig.get_path("scripts")}:$PATH"'
    return opts


class SlurmJobs(SlurmPipelineExecutor):
    """datatrove's executor, writing ``--partition`` and ``--qos`` only when they are set."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        for key in ("partition", "qos"):
            if not args.get(key):
                args.pop(key, None)
        return args


def require_commands() -> None:
    missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"executor.type=slurm, but {' and '.join(missing)} not found: run "
                          "codegpt prep where Slurm's commands are (a login node), or use "
                          "executor.type=local")


def queued_jobs(work: Path) -> list[str]:
    """Those of the last submission's jobs (recorded in ``work``) that Slurm still has pending
    or running, as ``JOBID (STATE)``."""
    path = work / JOBS_FILE
    if not path.is_file():
        return []
    ours = set(json.loads(path.read_text())["jobs"])
    proc = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%F %i %T"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed: {proc.stderr.strip()}")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    return [f"{r[1]} ({r[2]})" for r in rows if len(r) == 3 and r[0] in ours]


def record_jobs(work: Path, executors: list) -> list[str]:
    """Write the ids of the jobs just submitted (those that had tasks left); returns them."""
    jobs = [str(e.job_id) for e in executors if e.job_id not in (None, -1)]
    atomic_write_json(work / JOBS_FILE, {"jobs": jobs})
    return jobs
