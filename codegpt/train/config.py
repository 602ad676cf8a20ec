"""The training config: the paths it reads and writes at the top, then sections of typed fields.

Loaded with ``codegpt.config.load_config(TrainConfig, CONFIG, overrides)``; every field declares
its range with ``setting``, so a bad value is refused, by its key, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegpt.checkpoint import checkpoint_config, resolve_checkpoint
from codegpt.config import deep_merge, find_named_config, read_yaml, setting
from codegpt.errors import ConfigError
from codegpt.model import ModelConfig

DATA_FORMATS = ("tokens", "sft")
# Model keys that decide the weights' shapes or what they compute: a run that starts from a
# checkpoint has the checkpoint's values (dropout and the like may differ).
ARCHITECTURE_KEYS = ("n_layer", "n_head", "d_model", "block_size", "vocab_size",
                     "pad_vocab_multiple", "bias", "sparse_attention", "local_window",
                     "positions", "rope_theta", "norm", "norm_eps", "mlp", "mlp_hidden",
                     "qk_norm", "tie_embeddings", "logit_softcap")


@dataclass
class RunSection:
    seed: int = setting(1337, ge=0, lt=2**32)
    max_steps: int = setting(100, ge=1)  # optimizer updates in the whole run (the lr schedule's)
    resume: str = "auto"          # auto: newest complete checkpoint in dir; never; or a checkpoint path
    # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    precision: str = setting("auto", choices=("auto", "fp32", "bf16"))
    compile: bool = False         # torch.compile the model
    max_minutes: float = setting(0.0, ge=0)  # wall-time budget of the run (0: none): it stops,
                                  # saves and finishes when the budget is spent, and the lr's
                                  # cosine decays over time (the larger of the step and time
                                  # fractions)
    # keep freed host memory for the next step's tensors instead of handing it back to the OS
    # (glibc's malloc; elsewhere nothing changes): a CPU step then stops faulting in fresh
    # pages: 24x fewer page faults and up to 1.38x the steps/s for the CPU reference model
    # (docs/benchmarks.md)
    keep_host_memory: bool = True


@dataclass
class DataSection:
    # tokens (token shards) | sft (`codegpt sft-data`'s pairs)
    format: str = setting("tokens", choices=DATA_FORMATS)
    val_every: int = setting(0, ge=0)      # validation every N steps (0: never)
    val_sequences: int = setting(64, ge=1)  # sequences (sft: pairs) of the val split scored
    # fill-in-the-middle (codegpt.train.fim): the share of the documents of each train window
    # cut into prefix, middle and suffix (0: off; val stays left to right), and the share of
    # those laid out suffix first (SPM) instead of prefix first (PSM)
    fim_rate: float = setting(0.0, ge=0, le=1)
    fim_spm_rate: float = setting(0.5, ge=0, le=1)
    # tokens per training sequence (0: model.block_size); at most the context. Codex-S pairs
    # are padded to it one per sequence, so fine-tuning a long-context model on short pairs at
    # a shorter length spends its compute on the pairs, not the padding
    seq_len: int = setting(0, ge=0)


@dataclass
class BatchSection:
    global_batch_tokens: int = setting(8192, ge=1)  # tokens per optimizer update, all ranks
    micro_batch_size: int = setting(4, ge=1)        # sequences per forward pass on one rank


@dataclass
class OptimSection:
    # adamw: AdamW on every parameter. muon: torch.optim.Muon on the blocks' weight matrices
    # (orthogonalised momentum, Jordan et al. 2024), AdamW (the keys below) on the rest:
    # embeddings, the head, norms' gains and biases.
    name: str = setting("adamw", choices=("adamw", "muon"))
    lr: float = setting(6e-4, gt=0)             # the peak, after warmup
    beta1: float = setting(0.9, ge=0, lt=1)     # AdamW's (torch refuses beta outside [0, 1))
    beta2: float = setting(0.95, ge=0, lt=1)
    eps: float = setting(1e-8, gt=0)
    weight_decay: float = setting(0.1, ge=0)    # 0: none
    # max gradient norm; 0 is not "off": clipping to norm 0 would zero every update
    grad_clip: float = setting(1.0, gt=0)
    warmup_steps: int = setting(10, ge=0)
    min_lr_ratio: float = setting(0.1, ge=0, le=1)  # the cosine's floor, a share of lr
    fused: bool = True            # fused AdamW kernel (CPU and GPU)
    muon_lr: float = setting(0.02, gt=0)         # Muon's peak; its schedule is lr's, scaled
    muon_momentum: float = setting(0.95, ge=0, lt=1)
    muon_weight_decay: float = setting(0.0, ge=0)
    # original: the update scaled by sqrt(max(1, rows/cols)) (Keller Jordan's); match_rms_adamw:
    # 0.2 sqrt(max(rows, cols)), so that AdamW's lr and weight decay carry over (Moonshot's)
    muon_adjust_lr: str = setting("original", choices=("original", "match_rms_adamw"))


@dataclass
class CheckpointSection:
    every: int = setting(0, ge=0)     # save every N steps (0: only at the end); always at the end
    keep_last: int = setting(3, ge=1)  # complete checkpoints kept (older ones are deleted)


@dataclass
class LoggingSection:
    wandb: bool = False
    wandb_mode: str = setting("offline", choices=("offline", "online", "disabled"))
    wandb_project: str = "codegpt"
    # per-device peak FLOP/s for MFU when the device is not in the table (0: from the table)
    peak_flops: float = setting(0.0, ge=0)


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
    # resolved before the dataclass is built; both are strings (overrides keep their text)
    EXTRA_KEYS = ("model.size", "model.init_from")

    def __post_init__(self) -> None:
        if self.data.format == "sft" and not self.tokenizer:
            raise ValueError("data.format=sft needs tokenizer=FOLDER: the tokenizer the pairs are "
                             "encoded with, the one the model was pretrained with")
        if self.data.fim_rate and self.data.format != "tokens":
            raise ValueError("data.fim_rate applies to pretraining on token shards "
                             "(data.format=tokens), not to Codex-S pairs: set it to 0")
        if self.data.fim_rate and not self.tokenizer:
            raise ValueError("data.fim_rate needs tokenizer=FOLDER: the transform decodes and "
                             "re-encodes text with the tokenizer the shards were made with")
        if self.data.seq_len > self.model.block_size:
            raise ValueError(f"data.seq_len={self.data.seq_len} is longer than the model's "
                             f"context (model.block_size={self.model.block_size}): set it to "
                             f"at most {self.model.block_size}, or 0 for the whole context")

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence: ``data.seq_len``, or the model's whole context."""
        return self.data.seq_len or self.model.block_size

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
            folder = resolve_checkpoint(str(raw["init_from"]))
            raw["init_from"] = str(folder)
            raw["model"] = {**checkpoint_config(folder)["model"], **model}
        return raw
