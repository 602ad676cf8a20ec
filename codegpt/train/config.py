"""The training config: sections of typed fields, loaded from YAML plus CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from codegpt.config import (ConfigError, deep_merge, find_named_config, from_dict,
                            parse_overrides, read_yaml)
from codegpt.model import ModelConfig


@dataclass
class RunSection:
    dir: str = "runs/train"
    seed: int = 1337
    max_steps: int = 100          # optimizer updates in the whole run (the lr schedule's length)
    resume: str = "auto"          # auto: newest complete checkpoint in dir; never; or a checkpoint path
    precision: str = "auto"       # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False         # torch.compile the model


@dataclass
class DataSection:
    dir: str = "runs/demo/tokens"  # a token-shard folder with meta.json
    tokenizer: str = ""            # if set, the shards must have been made with this tokenizer
    val_every: int = 0             # validation every N steps (0: never)
    val_sequences: int = 64        # sequences of the val split scored each time


@dataclass
class BatchSection:
    global_batch_tokens: int = 8192  # tokens per optimizer update, across all ranks
    micro_batch_size: int = 4        # sequences per forward pass on one rank


@dataclass
class OptimSection:
    lr: float = 6e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    fused: bool = True            # fused AdamW kernel (CPU and GPU)


@dataclass
class CheckpointSection:
    every: int = 0                # save every N steps (0: only at the end); always at the end
    keep_last: int = 3


@dataclass
class LoggingSection:
    wandb: bool = False
    wandb_mode: str = "offline"   # offline | online | disabled
    wandb_project: str = "codegpt"
    peak_flops: float = 0.0       # per-device peak for MFU when the device is not in the table


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    EXTRA_KEYS = ("model.size",)  # resolved before the dataclass is built

    @property
    def seq_len(self) -> int:
        return self.model.block_size


def _resolve_model_size(raw: dict) -> dict:
    """``model.size: NAME`` loads configs/model/NAME.yaml; other model keys override it."""
    model = dict(raw.get("model") or {})
    size = model.pop("size", None)
    if size is not None:
        base = read_yaml(find_named_config("model", str(size)))
        model = deep_merge(base, model)
    return {**raw, "model": model}


def load_train_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TrainConfig:
    raw = read_yaml(find_named_config("train", str(path))) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides))
    raw = _resolve_model_size(raw)
    cfg = from_dict(TrainConfig, raw)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.run.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"run.precision must be auto, fp32 or bf16, got '{cfg.run.precision}'")
    if cfg.logging.wandb_mode not in ("offline", "online", "disabled"):
        raise ConfigError("logging.wandb_mode must be offline, online or disabled, "
                          f"got '{cfg.logging.wandb_mode}'")
    for key, value in (("run.max_steps", cfg.run.max_steps),
                       ("batch.micro_batch_size", cfg.batch.micro_batch_size),
                       ("batch.global_batch_tokens", cfg.batch.global_batch_tokens)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.optim.warmup_steps < 0 or not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")

