"""Data prep on a Ray cluster: datatrove's Ray executor, made to run for real.

``executor.type: ray`` runs the same three jobs as the local executor, with the same outputs,
as Ray tasks. datatrove's ``RayPipelineExecutor`` is kept for its options, its per-task logs
and its completion markers; its ``run`` is replaced (``RayExecutor.run``) because as written:

- each task runs in a child process that its Ray actor forks (a ``multiprocess`` pool of one):
  SIGKILL of that child (the process doing the work, the one an OOM killer picks) loses the
  pool's task, and the run waits forever; SIGKILL of the actor leaves the child running the
  task while datatrove submits the same task again: two processes write the same files;
- a task that fails for good is a warning: ``run`` returns as if done, and the next job waits
  for the missing ranks in two-minute sleeps, forever;
- a killed task is resubmitted at most 3 times, a number fixed in its code; its per-task time
  limit (``time``) kills the task and then fails the run with a KeyError.

Here each task is one Ray task in the worker process itself, and Ray runs it again on another
worker when that process dies (``executor.ray.retries`` times). A task writes its outputs
atomically and is marked complete last, so a rerun redoes it whole and a completed one is
skipped. A task that raises is not rerun (it would fail the same way): the job finishes its other
tasks and then raises, naming the failed tasks and their log files.

``run_on_ray`` connects to ``executor.ray.address`` (or ``$RAY_ADDRESS``), or else starts a
local cluster of ``executor.workers`` CPUs (one per core by default, as Ray counts them), runs
the jobs, and shuts down only what it started. The workers' output stays in the cluster's logs
(``log_to_driver=False``): every task's log is in ``OUT/logs/JOB/logs/``.

Run it in a process of its own, as ``codegpt prep`` does: Ray's threads and state outlive
``ray.shutdown()``, and in a test process that had run prep on Ray, the local executor's workers
forked afterwards were seen to segfault in Ray's library, and the local run to hang.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.executor.ray import RayPipelineExecutor
from datatrove.utils.logging import logger as datatrove_logger
from datatrove.utils.stats import PipelineStats
from tqdm import tqdm

from codegpt.errors import ConfigError
from data_prep.config import ExecutorConfig
from data_prep.executor_options import FLAG, check_options, number, whole

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 3

# executor.ray options that are ours, not RayPipelineExecutor's
OURS = ("address", "retries")
# RayPipelineExecutor arguments that make_executors sets from the rest of the config
SET_BY_CODEGPT = ("pipeline", "tasks", "workers", "depends", "logging_dir")
# RayPipelineExecutor arguments that executor.ray may set (those of the installed datatrove)
PASSED = ("cpus_per_task", "mem_per_cpu_gb", "gpus_per_task", "ray_remote_kwargs",
          "randomize_start_duration", "skip_completed", "log_first")
# RayPipelineExecutor arguments that RayExecutor does not implement, and why
UNSUPPORTED = {
    "nodes_per_task": "every task of the pipeline runs on one node",
    "tasks_per_job": "each task is one Ray task, so that a killed one is rerun alone",
    "time": "codegpt's Ray runner has no per-task time limit (datatrove's fails the run)",
}


# what each option's value must be
_VALUES = {
    "address": (lambda v: isinstance(v, str) and bool(v), "a cluster address (HOST:PORT, "
                "ray://HOST:PORT or auto)"),
    "retries": whole(0),
    "cpus_per_task": number(0, strict=True),
    "gpus_per_task": number(0),
    "mem_per_cpu_gb": number(0),
    "randomize_start_duration": whole(0, "a whole number >= 0 (seconds)"),
    "skip_completed": FLAG,
    "log_first": FLAG,
    "ray_remote_kwargs": (lambda v: isinstance(v, dict), "a mapping of Ray task options"),
}


def require_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("executor.type=ray needs ray, which is not installed: "
                          "pip install 'codegpt[ray]'") from e
    return ray


@dataclass
class RaySettings:
    """``executor.ray`` split into our options and RayPipelineExecutor's."""

    address: str | None = None      # None: $RAY_ADDRESS, else start a local cluster
    retries: int = DEFAULT_RETRIES  # reruns of a task whose worker process died
    executor: dict = field(default_factory=dict)  # passed to RayPipelineExecutor


def ray_settings(ex: ExecutorConfig) -> RaySettings:
    """Check ``executor.ray`` (and that ray is installed): unknown options, options that
    codegpt sets or does not support, and bad values are ConfigErrors that name them."""
    ray = require_ray()
    params = inspect.signature(RayPipelineExecutor.__init__).parameters
    known = [*OURS, *(p for p in PASSED if p in params)]
    check_options("executor.ray", ex.ray, known=known, set_by_codegpt=SET_BY_CODEGPT,
                  values=_VALUES, unsupported=UNSUPPORTED)
    settings = RaySettings()
    for key, value in ex.ray.items():
        if key in OURS:
            setattr(settings, key, value)
        else:
            settings.executor[key] = value
    theirs = settings.executor.get("ray_remote_kwargs") or {}
    for key, ours in (("max_retries", "executor.ray.retries"), ("name", "codegpt")):
        if key in theirs:
            raise ConfigError(f"executor.ray.ray_remote_kwargs.{key} is set by {ours}")
    try:  # Ray's own check of its task options (an actor's option here is an error)
        ray.remote(prep_task).options(**theirs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"executor.ray.ray_remote_kwargs: {e}") from e
    return settings


def check_ray_config(ex: ExecutorConfig) -> None:
    """Everything about ``executor.type: ray`` that can be checked before a run starts: ray
    installed, ``executor.ray``'s options, and the cluster address (if any) answering."""
    settings = ray_settings(ex)
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address and not require_ray().is_initialized():
        _check_reachable(address)


class RayExecutor(RayPipelineExecutor):
    """datatrove's RayPipelineExecutor, each task run as one Ray task in the worker process
    itself, rerun by Ray up to ``retries`` times when that process dies, and a job that
    raises if any of its tasks failed for good. Needs a connected cluster (``run_on_ray``)."""

    def __init__(self, pipeline: list, retries: int = DEFAULT_RETRIES, **kwargs):
        super().__init__(pipeline, **kwargs)
        self.retries = retries

    @property
    def job(self) -> str:
        """The job's name: its logging folder's (``1_filter``, ``2_dedup``, ``3_write``)."""
        return Path(self.logging_dir.path).name

    def remote_options(self) -> dict:
        """One task's Ray options: the resources datatrove reserves for it, the retries, and
        ``ray_remote_kwargs`` (which may override the resources, as in datatrove)."""
        return {"num_cpus": self.cpus_per_task, "num_gpus": getattr(self, "gpus_per_task", 0),
                "memory": int(self.mem_per_cpu_gb * self.cpus_per_task * 2**30),
                "max_retries": self.retries, "retry_exceptions": False,
                **(self.ray_remote_kwargs or {})}

    def run(self) -> None:
        """Run the dependency first if it has not run, then this job's unfinished tasks, at
        most ``workers`` at a time; raise, once the others are done, if any task failed."""
        import ray

        if self.depends is not None and not self.depends._launched:
            self.depends.run()
        self._launched = True
        ranks = self.get_incomplete_ranks()
        if not ranks:
            datatrove_logger.info(f"{self.job}: all {self.world_size} tasks completed already")
            return
        datatrove_logger.info(f"{self.job}: running {len(ranks)} of {self.world_size} tasks "
                              "on Ray")
        self.save_executor_as_json()
        executor = ray.put(self)
        task, options = ray.remote(prep_task), self.remote_options()
        waiting, running, failed = list(ranks), {}, {}
        with tqdm(total=len(ranks), desc=f"prep {self.job} on Ray", unit="task", leave=False,
                  disable=None) as bar:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    rank = waiting.pop(0)
                    name = f"codegpt prep {self.job} task {rank}"  # the worker's process title
                    running[task.options(name=name, **options).remote(executor, rank)] = rank
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    rank = running.pop(ref)
                    bar.update()
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:
                        failed[rank] = e
                        datatrove_logger.error(f"{self.job}: task {rank} failed: {e}")
        if failed:
            first = min(failed)
            logs = f"{self.logging_dir.path}/logs/task_NNNNN.log"
            raise RuntimeError(
                f"prep job {self.job}: {len(failed)} of {len(ranks)} tasks failed "
                f"({', '.join(map(str, sorted(failed)))}; their logs: {logs}); task {first}: "
                f"{_reason(failed[first])}") from failed[first]
        self._merge_stats()

    def _merge_stats(self) -> None:
        """The job's ``stats.json``: every task's stats added up, as datatrove does."""
        import json

        total = PipelineStats()
        for rank in range(self.world_size):
            with self.logging_dir.open(f"stats/{rank:05d}.json", "r") as f:
                total += PipelineStats.from_json(json.load(f))
        with self.logging_dir.open("stats.json", "wt") as f:
            total.save_to_disk(f)
        datatrove_logger.success(total.get_repr(f"All {self.world_size} tasks"))


def _reason(error: Exception) -> str:
    """A failed task's error in one line: the task's own exception, or Ray's account."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def prep_task(executor: RayExecutor, rank: int) -> None:
    """Task ``rank`` of ``executor``'s job, in this Ray worker process, without a child process:
    if this process dies, nothing of the task runs on while Ray runs it again elsewhere.

    datatrove's ``_run_for_rank`` logs to ``<tempdir>/ray_logs/logs/task_NNNNN.log`` and copies
    that file to the job's logs at the end; the temporary folder is this task's own, so that
    tasks of the same number (other jobs, other runs on the node) do not share that file."""
    saved = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix=f"codegpt-prep-{rank:05d}-") as tmp:
        tempfile.tempdir = tmp
        try:
            if executor.randomize_start_duration:
                time.sleep(random.randint(0, executor.randomize_start_duration))
            executor._run_for_rank(rank, 0 if executor.log_first else 1)
        finally:
            tempfile.tempdir = saved


@contextmanager
def ray_cluster(ex: ExecutorConfig, settings: RaySettings) -> Iterator[bool]:
    """Connected to a Ray cluster while inside; yields whether it was started here.

    An existing connection of this process is used as it is. Otherwise the cluster at
    ``settings.address`` or ``$RAY_ADDRESS`` is connected to, and disconnected from at the end;
    without either a local cluster of ``executor.workers`` CPUs (one per core for -1) is
    started, and shut down at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield False
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError) as e:  # refused, a version mismatch, no token...
            ray.shutdown()
            hint, chain, cause = "", [], e
            while cause is not None:  # Ray's reason is in the exceptions it chains
                chain.append(str(cause))
                cause = cause.__cause__ or cause.__context__
            if "authenticat" in " ".join(chain).lower():
                hint = ("; a cluster with Ray's token authentication (what `ray start` does "
                        "once a token exists) needs RAY_AUTH_MODE=token here too, and its token "
                        "in ~/.ray/auth_token or RAY_AUTH_TOKEN")
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: "
                              f"{str(e).splitlines()[0]}{hint}") from e
        cpus = ray.cluster_resources().get("CPU", 0)
        log.info("Ray: connected to the cluster at %s (%g CPUs)", address, cpus)
    else:
        cpus = ex.workers if ex.workers != -1 else None  # None: Ray counts the cores (cgroups too)
        context = ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        log.info("Ray: started a local cluster of %g CPUs (its logs: %s)",
                 ray.cluster_resources().get("CPU", 0),
                 Path(context.address_info["session_dir"]) / "logs")
    try:
        yield not address
    finally:
        ray.shutdown()  # a started cluster stops; a connected one only loses this driver


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address that nothing answers on is a ConfigError
    here: ray.init would try it again and again for minutes, deaf to Ctrl-C meanwhile."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray resolves them, and says when it cannot
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({e}): is it running? "
                          "(`ray start --head` prints its address)") from e


def _fits(request: dict) -> tuple[bool, dict]:
    """Whether a node of the connected cluster has all a task asks for; and what that is."""
    import ray

    need = {"CPU": request.get("num_cpus") or 0, "GPU": request.get("num_gpus") or 0,
            "memory": request.get("memory") or 0, **request.get("resources", {})}
    need = {k: v for k, v in need.items() if v}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes), need


def _describe(resources: dict) -> str:
    return ", ".join(f"{v / 2**30:.1f} GiB of memory" if k == "memory" else f"{v:g} {k}"
                     for k, v in resources.items())


def run_on_ray(executors: list[RayExecutor], ex: ExecutorConfig) -> None:
    """Run the jobs (the last one runs its dependencies first) on a Ray cluster: the one
    configured, or a local one started for them. A task no node can ever hold is a ConfigError
    on a local cluster; on a connected one, a warning (an autoscaler may add such a node)."""
    settings = ray_settings(ex)
    with ray_cluster(ex, settings) as started:
        ok, need = _fits(executors[0].remote_options())
        if not ok:
            import ray

            total = ray.cluster_resources()
            have = _describe({k: total.get(k, 0) for k in need})
            what = (f"a task asks for {_describe(need)} (executor.ray: cpus_per_task, "
                    f"mem_per_cpu_gb, gpus_per_task) but no node of the cluster has that")
            if started:
                raise ConfigError(f"{what}: the local Ray cluster has {have or 'none'}; ask "
                                  "for less per task, or for more CPUs with executor.workers")
            log.warning("%s (in all: %s); its tasks wait for such a node", what, have or "none")
        executors[-1].run()
