"""The data-prep pipeline as datatrove blocks, run by datatrove's executors.

Three datatrove jobs, each a list of small blocks:

1. ``tasks`` tasks:  SourceReader -> QualityFilter -> Decontaminate -> StageForDedup
   Every input file is read, filtered and checked against HumanEval; survivors are written
   to a per-task parquet file with their exact hash and MinHash signature.
2. one task:        PlanDedup — exact and near duplicates over all signatures.
3. ``tasks`` tasks:  WriteKept — the per-task survivors minus the planned removals, as the
   final parquet shards.

Each block records what it rejects (stage, reason, id, repo, path, size) in a per-task file;
``summarize`` adds everything up into ``stats.json`` and checks that inputs = kept + rejected.
Per-task outputs are written atomically at the end of a task, and datatrove skips completed
tasks, so a killed run started again (with the same number of tasks) redoes only unfinished
work.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from codegpt.documents import META_FIELDS, SCHEMA
from codegpt.errors import ConfigError
from codegpt.io import atomic_write_json
from codegpt.outputs import remove_temporary_files, writing_in_place
from data_prep.config import DecontamConfig, ExecutorConfig, PrepConfig
from data_prep.decontam import Decontaminator, benchmark_problems
from data_prep.dedup import DedupConfig, MinHasher, exact_hash, plan_removals, shingles
from data_prep.filters import FilterConfig, decode, first_failure
from data_prep.sources import registry

log = logging.getLogger(__name__)

SNIPPET_CHARS = 2000


# --- helpers shared by the blocks --------------------------------------------------------------

def build_sources(specs: list[dict]) -> list:
    """Instantiate the configured sources; unknown types and arguments are clear errors."""
    sources = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type", None)
        cls = registry().get(kind)
        if cls is None:
            raise ConfigError(f"unknown source type {kind!r}; known: {', '.join(sorted(registry()))}")
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for key in spec:
            if key not in params:
                close = difflib.get_close_matches(key, params, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown option '{key}' for source '{kind}'{hint}")
        try:
            sources.append(cls(**spec))
        except (ValueError, OSError) as e:  # a bad option value or a missing local folder
            raise ConfigError(f"source '{kind}': {e}") from e
    return sources


class RejectLog:
    """A task's rejections for one stage, written atomically when the stage finishes."""

    def __init__(self, work: Path, stage: str, rank: int, samples: int):
        self.path = work / "rejects" / stage / f"{rank:05d}.jsonl"
        self.stage, self.samples = stage, samples
        self.records: list[dict] = []
        self._sampled: Counter = Counter()

    def add(self, reason: str, doc_id: str, meta: dict, text: str | None = None, **extra) -> None:
        rec = {"stage": self.stage, "reason": reason, "id": doc_id,
               **{k: meta.get(k) for k in ("source", "repo_name", "path", "size")}, **extra}
        if text is not None and self._sampled[reason] < self.samples:
            self._sampled[reason] += 1
            rec["snippet"] = text[:SNIPPET_CHARS]
        self.records.append(rec)

    def close(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)


# --- job 1: read, filter, decontaminate, stage --------------------------------------------------

class SourceReader(PipelineStep):
    name = "📂 read sources"
    type = "📖 - READER"

    def __init__(self, sources: list[dict], work: str, samples: int, max_size_bytes: int):
        super().__init__()
        self.sources, self.work, self.samples = sources, Path(work), samples
        self.max_size_bytes = max_size_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        rejects = RejectLog(self.work, "read", rank, self.samples)
        inputs = {"files": 0, "bytes": 0}
        bar = tqdm(desc=f"prep task {rank}", unit="file", position=rank % 8, leave=False,
                   disable=None)
        for source in build_sources(self.sources):
            for raw in source.iter_files(rank, world_size):
                bar.update(1)
                size = int(raw.extra.get("size", len(raw.data) if raw.data is not None else 0))
                inputs["files"] += 1
                inputs["bytes"] += size
                self.stat_update("inputs")
                meta = {"source": raw.source, "repo_name": raw.repo_name, "path": raw.path,
                        "license": raw.license, "size": size, "stars": raw.stars,
                        "commit": raw.commit}
                if raw.error or raw.data is None:
                    rejects.add(raw.error or "unreadable", raw.id, meta)
                    continue
                if size >= self.max_size_bytes:  # before decoding a possibly cut-off prefix
                    yield Document(text="", id=raw.id, metadata={**meta, "reject": "size_too_large"})
                    continue
                text, why = decode(raw.data)
                if why:
                    rejects.add(why, raw.id, meta)
                    continue
                meta["sha256"] = hashlib.sha256(raw.data).hexdigest()
                yield Document(text=text, id=raw.id, metadata=meta)
        bar.close()
        rejects.close()
        atomic_write_json(self.work / "inputs" / f"{rank:05d}.json", inputs)


class _RejectingFilter(PipelineStep):
    """A filter set up by its config section (``cfg``) that logs what it rejects (a RejectLog)."""

    type = "🔻 - FILTER"

    def __init__(self, cfg: FilterConfig | DecontamConfig, work: str, samples: int):
        super().__init__()
        self.cfg, self.work, self.samples = cfg, Path(work), samples


class QualityFilter(_RejectingFilter):
    name = "🔍 quality filters"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        rejects = RejectLog(self.work, "filter", rank, self.samples)
        for doc in data:
            reason = doc.metadata.pop("reject", None) or first_failure(
                doc.text, doc.metadata["size"], self.cfg)
            if reason:
                self.stat_update(reason)
                rejects.add(reason, doc.id, doc.metadata, doc.text)
                continue
            self.stat_update("kept")
            yield doc
        rejects.close()


class Decontaminate(_RejectingFilter):
    name = "🧪 benchmark decontamination"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        rejects = RejectLog(self.work, "decontam", rank, self.samples)
        checker = None
        if self.cfg.enabled:
            checker = Decontaminator(ngram=self.cfg.ngram, benchmarks=self.cfg.benchmarks,
                                     sources=self.cfg.sources)
        for doc in data:
            reason = checker.check(doc.text) if checker else None
            if reason:
                self.stat_update("contaminated")
                rejects.add(reason.split(":")[0], doc.id, doc.metadata, doc.text,
                            detail=reason)
                continue
            yield doc
        rejects.close()


class StageForDedup(PipelineStep):
    """Writes survivors with their exact hash and MinHash signature for the dedup planner."""

    name = "🫂 stage for dedup"
    type = "💽 - WRITER"

    def __init__(self, cfg: DedupConfig, work: str):
        super().__init__()
        self.cfg, self.work = cfg, Path(work)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        hasher = MinHasher(self.cfg.num_perm, self.cfg.seed) if self.cfg.near else None
        out = self.work / "staged" / f"{rank:05d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        keys, hashes, sigs, batch = [], [], [], []
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for doc in data:
                m = doc.metadata
                keys.append((m["source"], m["repo_name"], m["path"], doc.id))
                hashes.append(exact_hash(doc.text))
                if hasher is not None:
                    sigs.append(hasher.signature(shingles(doc.text, self.cfg.ngram)))
                batch.append({"text": doc.text, "id": doc.id, **{k: m.get(k) for k in META_FIELDS}})
                if len(batch) >= 1000:
                    writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
        sig_arr = np.stack(sigs) if sigs else np.zeros((0, self.cfg.num_perm), np.uint32)
        sig_path = self.work / "staged" / f"{rank:05d}.sig.npz"
        with open(sig_path.with_suffix(".tmp"), "wb") as f:
            np.savez(f, hashes=np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, 16),
                     sigs=sig_arr)
        os.replace(sig_path.with_suffix(".tmp"), sig_path)
        atomic_write_json(self.work / "staged" / f"{rank:05d}.keys.json", keys)
        os.replace(tmp, out)  # the parquet last: its presence means the task's output is whole
        return
        yield  # a generator that yields nothing: the last block of the job


# --- job 2: plan dedup ---------------------------------------------------------------------

class PlanDedup(PipelineStep):
    name = "🫂 plan exact + near dedup"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: DedupConfig, work: str, tasks: int):
        super().__init__()
        self.cfg, self.work, self.tasks = cfg, Path(work), tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        keys, hashes, sigs = [], [], []
        for r in range(self.tasks):
            keys.extend(map(tuple, json.loads((self.work / "staged" / f"{r:05d}.keys.json").read_text())))
            with np.load(self.work / "staged" / f"{r:05d}.sig.npz") as z:
                hashes.extend(bytes(h) for h in z["hashes"])
                sigs.append(z["sigs"])
        sig_arr = np.concatenate(sigs) if self.cfg.near and sigs else None
        removed = plan_removals(keys, hashes, sig_arr, self.cfg)
        plan = {keys[i][3]: {"reason": reason, "kept": keys[j][3]}
                for i, (reason, j) in sorted(removed.items())}
        atomic_write_json(self.work / "dedup_removed.json", plan)
        self.stat_update("exact_duplicate", value=sum(r == "exact_duplicate" for r, _ in removed.values()))
        self.stat_update("near_duplicate", value=sum(r == "near_duplicate" for r, _ in removed.values()))
        return
        yield


# --- job 3: write the kept documents -----------------------------------------------------------

class WriteKept(PipelineStep):
    name = "💾 write kept documents"
    type = "💽 - WRITER"

    def __init__(self, work: str, out: str, samples: int):
        super().__init__()
        self.work, self.out, self.samples = Path(work), Path(out), samples

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        plan = json.loads((self.work / "dedup_removed.json").read_text())
        table = pq.read_table(self.work / "staged" / f"{rank:05d}.parquet")
        ids = table.column("id").to_pylist()
        keep = np.array([i not in plan for i in ids], dtype=bool)
        rejects = RejectLog(self.work, "dedup", rank, self.samples)
        for row in table.filter(pa.array(~keep)).to_pylist():
            info = plan[row["id"]]
            rejects.add(info["reason"], row["id"], row, row["text"], kept=info["kept"])
        rejects.close()
        kept = table.filter(pa.array(keep))
        dest = self.out / "data" / f"{rank:05d}.parquet"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        pq.write_table(kept, tmp)
        os.replace(tmp, dest)
        self.stat_update("kept", value=kept.num_rows)
        return
        yield


# --- running and summarising -------------------------------------------------------------------

_EXECUTOR_CLASSES = {"local": "LocalPipelineExecutor"}


def _executor_options(ex: ExecutorConfig, name: str, tasks: int) -> tuple[dict, dict]:
    """A job's executor arguments beyond the common ones, given the config's ``executor``
    section: (set by us, settable in the config).

    Kept apart so that the config repeating one of ours is an error, not a silent override."""
    if ex.type == "local":
        workers = ex.workers if ex.workers != -1 else min(tasks, os.cpu_count() or 1)
        return {"workers": workers, "start_method": ex.start_method}, {}
    if ex.type == "slurm":
        from data_prep.slurm_executor import slurm_options

        return {"job_name": f"codegpt-prep-{name}", "workers": ex.workers}, slurm_options(ex)
    from data_prep.ray_executor import ray_settings

    settings = ray_settings(ex)  # our options (address, retries) apart, the rest checked
    return {"workers": ex.workers, "retries": settings.retries}, settings.executor


def make_executors(cfg: PrepConfig) -> list:
    out = Path(cfg.out_dir)
    work = str(out / "work")
    tasks = cfg.executor.tasks
    samples = cfg.reject_samples
    jobs = [
        ("1_filter", [SourceReader(cfg.sources, work, samples, cfg.filters.max_size_bytes),
                      QualityFilter(cfg.filters, work, samples),
                      Decontaminate(cfg.decontam, work, samples),
                      StageForDedup(cfg.dedup, work)], tasks),
        ("2_dedup", [PlanDedup(cfg.dedup, work, tasks)], 1),
        ("3_write", [WriteKept(work, str(out), samples)], tasks),
    ]
    # the executors pull in their schedulers' client code (Slurm, Ray): imported when one is built
    if cfg.executor.type == "ray":  # datatrove's, made to run for real: see data_prep.ray_executor
        from data_prep.ray_executor import RayExecutor as cls
    elif cfg.executor.type == "slurm":  # datatrove's, made right for sbatch: data_prep.slurm_executor
        from data_prep.slurm_executor import SlurmJobs as cls
    else:
        import datatrove.executor

        cls = getattr(datatrove.executor, _EXECUTOR_CLASSES[cfg.executor.type])
    executors = []
    for name, pipeline, n in jobs:
        ours, opts = _executor_options(cfg.executor, name, n)
        executors.append(cls(pipeline=pipeline, tasks=n, logging_dir=str(out / "logs" / name),
                             depends=executors[-1] if executors else None, **ours, **opts))
    return executors


@contextmanager
def datatrove_console_to(path: Path) -> Iterator[None]:
    """While inside, what datatrove would print on the console is appended to ``path`` instead.

    datatrove has no switch for this: each task's ``add_task_logger`` removes every loguru sink
    and adds one on ``sys.stderr`` (besides the task's own ``<logging_dir>/logs/task_NNNNN.log``),
    and ``close_task_logger`` puts back its default sink, again on ``sys.stderr``; the executors
    log progress and stats tables there too. Both look ``sys.stderr`` up in
    ``datatrove.utils.logging`` when called, so that module is shown ``path`` as its stderr.
    Workers forked from here (start_method fork, the default) inherit this, and one worker runs
    in this process; spawn/forkserver workers start a fresh datatrove that still prints its
    tasks' logs. Our own tqdm bars and messages keep the real stderr. loguru's report of a
    sink that failed (a task's log file on a full disk) goes to ``path`` too, so a full disk is
    one line on the console, the CLI's, not a traceback per task.
    """
    import loguru._error_interceptor as loguru_errors  # private: only while redirecting

    import datatrove.utils.logging as dt_logging

    class _Sys:  # the sys module, but with another stderr
        def __init__(self, stderr):
            self.stderr = stderr

        def __getattr__(self, name):
            return getattr(sys, name)

    path.parent.mkdir(parents=True, exist_ok=True)
    saved = dt_logging.sys
    with open(path, "a", buffering=1) as f:  # append: workers write through one shared offset
        dt_logging.sys = loguru_errors.sys = _Sys(f)
        dt_logging.setup_default_logger()
        try:
            yield
        finally:
            dt_logging.sys, loguru_errors.sys = saved, sys
            dt_logging.setup_default_logger()


def run_prep(cfg: PrepConfig) -> dict | None:
    """Run the three jobs and summarise. On Slurm the jobs are submitted and None returned; the
    same command run again says which are still queued, or submits the tasks left unfinished
    (cancelled, failed), or once all are complete summarises.

    datatrove's own logs go to ``logs/`` in the output folder, not to the console: one file
    per task under each job's folder, and what it would have printed in ``logs/prep.log``."""
    build_sources(cfg.sources)  # a bad source is refused here, before any worker starts
    if cfg.executor.type == "ray":  # and bad executor.ray options, no ray, no cluster there
        from data_prep.ray_executor import check_ray_config

        check_ray_config(cfg.executor)
    slurm = cfg.executor.type == "slurm"
    if slurm:  # and bad executor.slurm options, or no Slurm commands here
        from data_prep import slurm_executor

        slurm_executor.slurm_options(cfg.executor)
        slurm_executor.require_commands()
    with writing_in_place(cfg.out_dir, "prep", cleanup=remove_temporary_files) as place:
        out = place.folder
        _check_resume(out, cfg)
        if slurm and (queued := slurm_executor.queued_jobs(out / "work")):
            log.warning("%s: jobs still queued or running: %s; run the same command again "
                        "once they finish", out, ", ".join(queued))
            return None  # their files are left alone
        console_log = out / "logs" / "prep.log"
        log.info("datatrove's logs: %s and %s", console_log, out / "logs" / "*" / "logs")
        with datatrove_console_to(console_log):
            executors = make_executors(cfg)  # some warn as they are built
            done = slurm and not any(e.get_incomplete_ranks() for e in executors)
            if not done:
                remove_temporary_files(out)  # of a killed run: its tasks run again
            if cfg.executor.type == "ray":
                from data_prep.ray_executor import run_on_ray

                run_on_ray(executors, cfg.executor)  # on the configured or a local cluster
            elif not done:
                executors[-1].run()  # runs its dependencies first (on Slurm: submits them)
        if slurm and not done:
            jobs = slurm_executor.record_jobs(out / "work", executors)
            log.info("submitted Slurm jobs %s (logs in %s)", ", ".join(jobs),
                     out / "logs" / "*" / "slurm_logs")
            return None  # the marker says running until a later `codegpt prep` summarises
        stats = summarize(out, cfg)
        place.complete([out / "stats.json", *sorted((out / "data").glob("*.parquet"))])
        return stats


def _resume_key(cfg: PrepConfig) -> dict:
    """What must not change between a run and its resume (how it is executed may)."""
    plain = _plain(cfg)
    plain["executor"] = {"tasks": cfg.executor.tasks}
    plain["out_dir"], plain["reject_samples"] = "", 0
    return json.loads(json.dumps(plain))


def _check_resume(out: Path, cfg: PrepConfig) -> None:
    """Completion markers are per task and outputs per config: refuse to mix two runs."""

    marker = out / "work" / "run.json"
    key = _resume_key(cfg)
    if not marker.exists():
        atomic_write_json(marker, key)
        return
    before = json.loads(marker.read_text())
    if before["executor"]["tasks"] != cfg.executor.tasks:
        raise ConfigError(f"{out} was started with executor.tasks={before['executor']['tasks']}; "
                          "resume with the same number, or choose a new out_dir")
    if before != key:
        changed = sorted(k for k in key if key[k] != before.get(k))
        raise ConfigError(f"{out} was made with a different config (changed: {', '.join(changed)}); "
                          "choose a new out_dir, or delete it to start over")


def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def summarize(out: str | Path, cfg: PrepConfig) -> dict:
    """stats.json: inputs, kept, rejections by stage and reason (files and bytes), samples."""
    out = Path(out)
    work = out / "work"
    tasks = cfg.executor.tasks
    inputs = {"files": 0, "bytes": 0}
    for r in range(tasks):
        d = json.loads((work / "inputs" / f"{r:05d}.json").read_text())
        inputs["files"] += d["files"]
        inputs["bytes"] += d["bytes"]
    rejected: dict = defaultdict(lambda: defaultdict(lambda: {"files": 0, "bytes": 0}))
    samples: dict = defaultdict(list)
    for stage in ("read", "filter", "decontam", "dedup"):
        for r in range(tasks):
            path = work / "rejects" / stage / f"{r:05d}.jsonl"
            if not path.exists():
                continue
            for rec in _read_jsonl(path):
                slot = rejected[stage][rec["reason"]]
                slot["files"] += 1
                slot["bytes"] += rec.get("size") or 0
                samples[(stage, rec["reason"])].append(rec)
    kept_files, kept_bytes = 0, 0
    for r in range(tasks):
        meta = pq.read_table(out / "data" / f"{r:05d}.parquet", columns=["size"])
        kept_files += meta.num_rows
        kept_bytes += int(pa.compute.sum(meta.column("size")).as_py() or 0)
    n_rejected = sum(v["files"] for s in rejected.values() for v in s.values())
    stats = {
        "inputs": inputs,
        "kept": {"files": kept_files, "bytes": kept_bytes},
        "rejected": {s: dict(sorted(v.items())) for s, v in rejected.items()},
        "rejected_files": n_rejected,
        "accounted": kept_files + n_rejected == inputs["files"],
        # per benchmark: its problems checked against, or why it was not covered
        "decontaminated_against": (benchmark_problems(cfg.decontam.benchmarks,
                                                      cfg.decontam.sources)[1]
                                   if cfg.decontam.enabled else {}),
        "config": _plain(cfg),
    }
    if not stats["accounted"]:
        raise RuntimeError(f"accounting error: {inputs['files']} inputs but {kept_files} kept + "
                           f"{n_rejected} rejected; see {work}")
    _write_samples(out / "rejected", samples, cfg.reject_samples)
    atomic_write_json(out / "stats.json", stats)
    return stats


def _write_samples(folder: Path, samples: dict, k: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for (stage, reason), recs in sorted(samples.items()):
        recs = sorted(recs, key=lambda r: r["id"])
        with_text = [r for r in recs if "snippet" in r][:k] or recs[:k]
        with open(folder / f"{stage}__{reason}.jsonl", "w") as f:
            for r in with_text:
                f.write(json.dumps(r) + "\n")


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
