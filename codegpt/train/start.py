"""What a training run starts from, checked before it trains: its data, the model's vocabulary,
the checkpoint of ``init_from``, and the config of a checkpoint it resumes.

Every check here is a ConfigError naming the setting to change, raised before the run writes
anything to its folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from codegpt import checkpoint as cp
from codegpt.config import from_dict, load_yaml, yaml_text
from codegpt.errors import ConfigError
from codegpt.model import ModelConfig
from codegpt.train.batches import TrainData, open_token_data
from codegpt.train.config import ARCHITECTURE_KEYS, TrainConfig
from codegpt.train.fim import Fim, FimWindows, make_codec
from codegpt.train.sft import open_sft_data

log = logging.getLogger(__name__)

ABSENT = "(absent)"  # the value of a key a config lacks, in ``config_changes``
RESUME_IGNORED_KEYS = ("run.resume",)  # how a run finds its checkpoint, not what it trains
# Keys codegpt gained after it wrote checkpoints: an older checkpoint's config lacks them, and
# their absence means their default (GPT-3's architecture, AdamW), which a resumed run keeps.
IMPLIED_BY_ABSENCE = (*(f"model.{k}" for k in ("positions", "rope_theta", "norm", "norm_eps",
                                               "mlp", "mlp_hidden", "qk_norm", "tie_embeddings",
                                               "logit_softcap")), "optim.name")


def open_data(cfg: TrainConfig) -> TrainData:
    """The examples of ``data.format``: token-shard windows, or Codex-S pairs tokenized now."""
    with_val = cfg.data.val_every > 0
    if cfg.data.format == "sft":
        return open_sft_data(cfg.data_dir, cfg.tokenizer, cfg.seq_len, with_val)
    data = open_token_data(cfg.data_dir, cfg.tokenizer, cfg.seq_len, with_val)
    if cfg.data.fim_rate:  # train windows only: val loss stays left to right
        fim = Fim(cfg.data.fim_rate, cfg.data.fim_spm_rate)
        log.info("fill-in-the-middle: %.0f%% of the train windows' documents (%.0f%% of those "
                 "in SPM order); val stays left to right", 100 * fim.rate, 100 * fim.spm_rate)
        data = data._replace(train=FimWindows(data.train, fim, make_codec(cfg.tokenizer),
                                              cfg.run.seed))
    return data


def data_source(cfg: TrainConfig) -> str:
    """Where the data's token ids come from, for messages."""
    if cfg.data.format == "sft":
        return f"the tokenizer {cfg.tokenizer}"
    return f"the token shards in {cfg.data_dir}"


def log_data(cfg: TrainConfig, data: TrainData) -> None:
    """How many pairs fit a sequence (SFT); the others were dropped."""
    if cfg.data.format != "sft":
        return
    for split, examples in (("train", data.train), ("val", data.val)):
        if examples is not None:
            kept, dropped = len(examples), examples.dropped
            (log.warning if dropped else log.info)(
                "%s: %d of %d pairs fit %d tokens; %d longer ones dropped (%.1f%%)", split, kept,
                kept + dropped, cfg.seq_len + 1, dropped, 100 * dropped / (kept + dropped))


def resolve_vocab(cfg: TrainConfig, data: TrainData) -> None:
    """model.vocab_size=0 takes the data's vocabulary; any other value must equal it."""
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.vocab_size
    elif cfg.model.vocab_size != data.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} but the data "
                          f"({data_source(cfg)}) has a vocabulary of {data.vocab_size}; set "
                          "model.vocab_size=0 to take it from the data")


def check_start_tokenizer(folder: Path, start_cfg: dict, data: TrainData,
                          cfg: TrainConfig) -> None:
    """Refuse to start from a checkpoint trained on another tokenizer's ids than the data's: by
    the tokenizer hash the checkpoint records (``checkpoint_tokenizer_hash``) against the data's,
    so no path is resolved and the check is the same from any working directory; where either
    records none, by the vocabulary size, with a warning."""
    theirs = cp.checkpoint_tokenizer_hash(folder)
    if theirs and data.tokenizer_hash:
        if theirs != data.tokenizer_hash:
            raise ConfigError(f"init_from={folder} was trained with the tokenizer {theirs[:12]}, "
                              f"but the data's ids come from another one ({data_source(cfg)}: "
                              f"{data.tokenizer_hash[:12]}); fine-tune on data made with the "
                              "tokenizer the model was trained with")
        return
    log.warning("init_from=%s: %s records no tokenizer hash, so only the vocabulary size is "
                "checked", folder, "the checkpoint (an older one)" if not theirs
                else f"the data ({data_source(cfg)})")
    vocab = start_cfg["model"].get("vocab_size")
    if vocab != data.vocab_size:
        raise ConfigError(f"init_from={folder} has a vocabulary of {vocab} ids but the data "
                          f"({data_source(cfg)}) has {data.vocab_size}: use the tokenizer the "
                          "model was trained with")


def check_start_model(folder: Path, start_model: dict, model: ModelConfig) -> None:
    """Refuse a model config that differs from the checkpoint's in a key that shapes the weights
    (``ARCHITECTURE_KEYS``), naming the key."""
    theirs = from_dict(ModelConfig, start_model, prefix="model.")
    for key in ARCHITECTURE_KEYS:
        if getattr(model, key) != getattr(theirs, key):
            raise ConfigError(f"model.{key}={getattr(model, key)} but init_from={folder} holds a "
                              f"model with {key}={getattr(theirs, key)}: the model of a run that "
                              f"starts from a checkpoint is the checkpoint's; drop model.{key} "
                              "(or model.size) from the config")


def resolve_start(cfg: TrainConfig, data: TrainData) -> Path | None:
    """Resolve the model's vocabulary from the data; with init_from, return its checkpoint
    folder once it is known to fit: trained with the data's tokenizer, of the configured model."""
    if not cfg.init_from:
        resolve_vocab(cfg, data)
        return None
    folder = cp.resolve_checkpoint(cfg.init_from)
    start_cfg = cp.checkpoint_config(folder)
    check_start_tokenizer(folder, start_cfg, data, cfg)
    resolve_vocab(cfg, data)
    check_start_model(folder, start_cfg["model"], cfg.model)
    return folder


def flat_config(config: dict, prefix: str = "") -> dict:
    """A nested config mapping (as config.yaml holds it) by dotted key: {"optim.lr": 6e-4}."""
    out = {}
    for k, v in config.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """The dotted keys whose values differ between two configs (nested mappings, as config.yaml
    holds them), each with (old, new); a key that one of them lacks has ``ABSENT`` there."""
    a, b = flat_config(old), flat_config(new)
    keys = list(b) + [k for k in a if k not in b]
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys
            if k not in a or k not in b or a[k] != b[k]}


def resume_fixed(key: str, old) -> str | None:
    """Why a resumed run may not change ``key`` from the checkpoint's ``old`` value (the end of
    the error's sentence), or None where it may."""
    if key.startswith("model.") and key[len("model."):] in ARCHITECTURE_KEYS:
        name = key[len("model."):]
        return (f"holds a model with {name}={old}: a resumed run keeps its weights' shape; "
                f"resume with {key}={old}, or start a new run (another out_dir, or "
                "run.resume=never)")
    if key == "optim.name":
        return (f"holds the state of optim.name={old}: resume with optim.name={old}, or start "
                "a new run from its weights (init_from, another out_dir)")
    return None


def check_resume_config(folder: Path, cfg: TrainConfig, warn: bool = True) -> None:
    """A run that resumes from ``folder`` with other settings than the checkpoint's run (its
    config.yaml) says so: one warning listing every changed key with its old and new value
    (``warn``: on the main process); a changed key that shapes the weights (``ARCHITECTURE_KEYS``)
    or names the optimizer whose state it holds is a ConfigError naming it. One the
    checkpoint's config lacks, from an older codegpt, is only listed, unless its absence means
    a value (``IMPLIED_BY_ABSENCE``) and the run asks for another. The same config (a requeue)
    says nothing."""
    saved = cp.checkpoint_config(folder)
    now = load_yaml(yaml_text(cfg))  # as config.yaml holds it
    changes = {k: v for k, v in config_changes(saved, now).items()
               if k not in RESUME_IGNORED_KEYS}
    defaults = flat_config(load_yaml(yaml_text(TrainConfig())))
    for key, (old, new) in changes.items():
        if old == ABSENT and key in IMPLIED_BY_ABSENCE:
            old = defaults[key]
        why = resume_fixed(key, old)
        if why and old != ABSENT and old != new:
            raise ConfigError(f"{key}={new} but the checkpoint {folder} this run resumes from "
                              f"{why}")
    if changes and warn:
        log.warning("resuming from %s with changed settings: %s", folder,
                    ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
