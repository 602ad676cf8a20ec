"""Loading a data-prep config: YAML in configs/data/ plus section.field=value overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from codegpt.config import (ConfigError, deep_merge, find_named_config, from_dict,
                            parse_overrides, read_yaml)
from data_prep.pipeline import PrepConfig


def load_prep_config(path: str | Path | None, overrides: Iterable[str] = ()) -> PrepConfig:
    raw = read_yaml(find_named_config("data", str(path))) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides))
    cfg = from_dict(PrepConfig, raw)
    if cfg.executor.tasks < 1:
        raise ConfigError(f"executor.tasks must be >= 1, got {cfg.executor.tasks}")
    if not 0.0 < cfg.dedup.threshold <= 1.0:
        raise ConfigError(f"dedup.threshold must be in (0, 1], got {cfg.dedup.threshold}")
    if cfg.dedup.num_perm % cfg.dedup.bands:
        raise ConfigError(f"dedup.num_perm={cfg.dedup.num_perm} must be a multiple of "
                          f"dedup.bands={cfg.dedup.bands}")
    if not isinstance(cfg.sources, list) or not all(isinstance(s, dict) and "type" in s
                                                    for s in cfg.sources):
        raise ConfigError("sources must be a list of mappings, each with a 'type'")
    return cfg
