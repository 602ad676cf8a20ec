"""The data-prep config: sources, filters, dedup, decontamination, executor and output.

Loaded with ``codegpt.config.load_config(PrepConfig, CONFIG, overrides)`` from
``configs/data/``; every section checks its own values when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.dedup import DedupConfig
from data_prep.filters import FilterConfig


@dataclass
class DecontamConfig:
    enabled: bool = True
    ngram: int = 13

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"decontam.ngram must be >= 1, got {self.ngram}")


@dataclass
class ExecutorConfig:
    type: str = "local"          # local | slurm | ray
    tasks: int = 2               # keep fixed across a resume
    workers: int = -1            # local: parallel processes (-1: one per core, at most tasks)
    start_method: str = "fork"   # local: fork starts workers in milliseconds; spawn/forkserver
    slurm: dict = field(default_factory=dict)  # extra SlurmPipelineExecutor arguments
    ray: dict = field(default_factory=dict)    # extra RayPipelineExecutor arguments

    def __post_init__(self) -> None:
        if self.type not in ("local", "slurm", "ray"):
            raise ValueError(f"executor.type must be local, slurm or ray, got {self.type!r}")
        if self.tasks < 1:
            raise ValueError(f"executor.tasks must be >= 1, got {self.tasks}")
        if self.workers == 0 or self.workers < -1:
            raise ValueError(f"executor.workers must be >= 1 (or -1: one per core), got {self.workers}")


@dataclass
class PrepConfig:
    out_dir: str = "runs/data/default"  # data/*.parquet, stats.json, rejected/, logs/
    sources: list = field(default_factory=lambda: [{"type": "local"}])
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    reject_samples: int = 5      # rejected files kept per (stage, reason) for inspection

    STAGE = "data"
    RENAMED = {"output.dir": "out_dir", "output.reject_samples": "reject_samples"}

    def __post_init__(self) -> None:
        if not isinstance(self.sources, list) or not all(
                isinstance(s, dict) and "type" in s for s in self.sources):
            raise ValueError("sources must be a list of mappings, each with a 'type'")
        if not self.sources:
            raise ValueError("sources is empty: name at least one source")
