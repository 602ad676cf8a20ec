"""The training config: the paths it reads and writes at the top, then sections of typed fields.

Loaded with ``codegpt.config.load_config(TrainConfig, CONFIG, overrides)``; each section checks
its own values when it is built, so a bad value is refused before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codegpt.config import deep_merge, find_named_config, read_yaml
from codegpt.errors import ConfigError
from codegpt.model import ModelConfig

DATA_FORMATS = ("tokens", "sft")
# Model keys that decide the weights' shapes or what they compute: a run that starts from a
# checkpoint has the checkpoint's values (dropout and the like may differ).
ARCHITECTURE_KEYS = ("n_layer", "n_head", "d_model", "block_size", "vocab_size",
                     "pad_vocab_multiple", "bias", "sparse_attention", "local_window")


def _at_least(value: int | float, minimum: int | float, key: str) -> None:
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


@dataclass
class RunSection:
    seed: int = 1337
    max_steps: int = 100          # optimizer updates in the whole run (the lr schedule's length)
    resume: str = "auto"          # auto: newest complete checkpoint in dir; never; or a checkpoint path
    precision: str = "auto"       # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False         # torch.compile the model
    max_minutes: float = 0.0      # wall-time budget of the run (0: none): it stops, saves and
                                  # finishes when the budget is spent, and the lr's cosine decays
                                  # over time (the larger of the step and time fractions)

    def __post_init__(self) -> None:
        _at_least(self.max_steps, 1, "run.max_steps")
        _at_least(self.max_minutes, 0.0, "run.max_minutes")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"run.precision must be auto, fp32 or bf16, got '{self.precision}'")


@dataclass
class DataSection:
    format: str = "tokens"         # tokens (token shards) | sft (`codegpt sft-data`'s pairs)
    val_every: int = 0             # validation every N steps (0: never)
    val_sequences: int = 64        # sequences (sft: pairs) of the val split scored each time

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {', '.join(DATA_FORMATS)}, "
                             f"got '{self.format}'")
        _at_least(self.val_every, 0, "data.val_every")
        _at_least(self.val_sequences, 1, "data.val_sequences")


@dataclass
class BatchSection:
    global_batch_tokens: int = 8192  # tokens per optimizer update, across all ranks
    micro_batch_size: int = 4        # sequences per forward pass on one rank

    def __post_init__(self) -> None:
        _at_least(self.global_batch_tokens, 1, "batch.global_batch_tokens")
        _at_least(self.micro_batch_size, 1, "batch.micro_batch_size")


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

    def __post_init__(self) -> None:
        _at_least(self.lr, 0.0, "optim.lr")
        _at_least(self.warmup_steps, 0, "optim.warmup_steps")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class CheckpointSection:
    every: int = 0                # save every N steps (0: only at the end); always at the end
    keep_last: int = 3

    def __post_init__(self) -> None:
        _at_least(self.every, 0, "checkpoint.every")


@dataclass
class LoggingSection:
    wandb: bool = False
    wandb_mode: str = "offline"   # offline | online | disabled
    wandb_project: str = "codegpt"
    peak_flops: float = 0.0       # per-device peak for MFU when the device is not in the table

    def __post_init__(self) -> None:
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError("logging.wandb_mode must be offline, online or disabled, "
                             f"got '{self.wandb_mode}'")


@dataclass
class TrainConfig:
    data_dir: str = "runs/demo/tokens"  # tokens: token shards (`codegpt tokenize`); sft: the pairs
                                        # (train.jsonl, val.jsonl) of `codegpt sft-data`
    tokenizer: str = ""                 # tokens: if set, the shards must have been made with it;
                                        # sft: required, the pairs are encoded with it
    init_from: str = ""                 # (model.init_from) start from this checkpoint's weights
    out_dir: str = "runs/train"         # the run: config, metrics, checkpoints, status
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    STAGE = "train"
    RENAMED = {"run.dir": "out_dir", "data.dir": "data_dir", "data.tokenizer": "tokenizer"}
    EXTRA_KEYS = ("model.size", "model.init_from")  # resolved before the dataclass is built

    def __post_init__(self) -> None:
        if self.data.format == "sft" and not self.tokenizer:
            raise ValueError("data.format=sft needs tokenizer=FOLDER: the tokenizer the pairs are "
                             "encoded with, the one the model was pretrained with")

    @property
    def seq_len(self) -> int:
        return self.model.block_size

    @staticmethod
    def resolve_raw(raw: dict) -> dict:
        """``model.size: NAME`` loads configs/model/NAME.yaml; other model keys override it.

        ``model.init_from: PATH`` (the same as ``init_from: PATH``) starts from a checkpoint, or
        from the newest complete checkpoint of a run folder: ``init_from`` becomes that
        checkpoint's folder, and the model is the checkpoint's model, which given model keys may
        only repeat (the trainer refuses a different architecture key by name) or extend with
        what does not shape the weights (dropout)."""
        model = dict(raw.get("model") or {})
        size = model.pop("size", None)
        init_from = model.pop("init_from", None)
        if size is not None:
            model = deep_merge(read_yaml(find_named_config("model", str(size))), model)
        raw = {**raw, "model": model}
        if init_from is not None:
            if raw.get("init_from") not in (None, "", init_from):
                raise ConfigError(f"model.init_from={init_from} and init_from={raw['init_from']} "
                                  "name different checkpoints: give one")
            raw["init_from"] = init_from
        if raw.get("init_from"):
            from codegpt.train.checkpoint import checkpoint_config, resolve_checkpoint

            folder = resolve_checkpoint(str(raw["init_from"]))
            raw["init_from"] = str(folder)
            raw["model"] = {**checkpoint_config(folder)["model"], **model}
        return raw
