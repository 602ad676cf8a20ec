"""The data-prep config: sources, filters, dedup, decontamination, executor and output.

Loaded with ``codegpt.config.load_config(PrepConfig, CONFIG, overrides)`` from
``configs/data/``; every field declares its range or choices with ``setting`` (the filters'
and dedup's in their own modules), checked when the config is loaded; a source's options are
checked when the sources are built (``data_prep.pipeline.build_sources``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegpt.benchmarks import BENCHMARKS
from codegpt.config import setting
from data_prep.dedup import DedupConfig
from data_prep.filters import FilterConfig


@dataclass
class DecontamConfig:
    enabled: bool = True
    ngram: int = setting(13, ge=1)
    # the benchmarks kept out of the data (each where its problems are on this machine: the
    # stats say which were covered); sources: NAME -> a local file or folder of its problems
    benchmarks: list[str] = setting(default_factory=lambda: list(BENCHMARKS),
                                    choices=tuple(BENCHMARKS))
    sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sources) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"decontam.sources names unknown benchmarks {unknown} (known: "
                             f"{', '.join(BENCHMARKS)})")


@dataclass
class ExecutorConfig:
    type: str = setting("local", choices=("local", "slurm", "ray"))
    tasks: int = setting(2, ge=1)        # keep fixed across a resume
    # local: parallel processes (-1: one per core, at most tasks). ray: tasks at a time (-1: as
    # many as the cluster holds), and the CPUs of a cluster prep starts itself (-1: one per core)
    workers: int = setting(-1, ge=1, choices=(-1,), what="-1 (one per core) or >= 1")
    # local: fork starts workers in milliseconds; spawn/forkserver
    start_method: str = setting("fork", choices=("fork", "spawn", "forkserver"))
    slurm: dict = field(default_factory=dict)  # extra SlurmPipelineExecutor arguments
    # address, retries (ours: data_prep.ray_executor) and extra RayPipelineExecutor arguments
    ray: dict = field(default_factory=dict)


@dataclass
class PrepConfig:
    out_dir: str = "runs/data/default"  # data/*.parquet, stats.json, rejected/, logs/
    sources: list = field(default_factory=lambda: [{"type": "local"}])
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    reject_samples: int = setting(5, ge=0)  # rejected files kept per (stage, reason)

    STAGE = "data"
    RENAMED = {"output.dir": "out_dir", "output.reject_samples": "reject_samples"}

    def __post_init__(self) -> None:
        if not all(isinstance(s, dict) and "type" in s for s in self.sources):
            raise ValueError("sources must be a list of mappings, each with a 'type'")
        if not self.sources:
            raise ValueError("sources is empty: name at least one source")
