"""Checkpoints as every stage reads them: find, verify and load a model for inference.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` holding::

    model.safetensors     full model weights (fp32; the tied head is stored once)
    optimizer.pt          full optimizer state
    scheduler.pt          the lr schedule's state (read by older codegpt only)
    trainer_state.json    step, data position, tokens seen, world size, and the hash of the
                          tokenizer the model's ids come from (``checkpoint_tokenizer_hash``)
    rng/rank_NNNNN.pt     every rank's python / numpy / torch (/ cuda) RNG state
    config.yaml           the resolved run config
    manifest.json         size and sha256 of every file above, written last

Training writes them (``codegpt.train.checkpoint``); this module reads them. Loading checks the
manifest; a truncated or altered file is an error that names it. A folder is hashed once per
process: a second ``verify`` of files whose sizes and modification times are unchanged reuses
the first one's result.

A checkpoint meets a tokenizer in one place, ``checkpoint_tokenizer``: a tokenizer whose hash
differs from the one the checkpoint records is refused (sampling, evaluation, export), so a
model is never run on the ids of another tokenizer of the same size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from codegpt.config import from_dict, load_yaml
from codegpt.errors import CheckpointError, ConfigError, TokenizerError
from codegpt.io import sha256_file
from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import load_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)


MANIFEST = "manifest.json"

TMP_PREFIX = ".tmp_"

TIED_KEYS = {"lm_head.weight": "wte.weight"}


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class CheckpointState:
    """What a resumed run needs besides the tensors."""

    step: int
    data: dict
    tokens_seen: int
    world_size: int
    extra: dict
    tokenizer_hash: str | None = None  # None: saved before checkpoints recorded it, or from
                                       # token shards without one


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, oldest first (temp folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return [p for _, p in sorted(found)]


# folder -> (the stat of its manifest and files when they were hashed, the manifest)
_VERIFIED: dict[Path, tuple[tuple, dict]] = {}


def _fingerprint(folder: Path, files: dict) -> tuple:
    """What tells a folder's files apart from the ones hashed before: size, mtime and inode."""
    stats = []
    for rel in (MANIFEST, *sorted(files)):
        st = (folder / rel).stat()
        stats.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stats)


def verify(folder: Path, check_hashes: bool = True) -> dict:
    """Raise CheckpointError unless every file in the manifest is present and intact. The
    hashes of a folder are computed once per process: files whose size, modification time and
    inode are those of a folder that verified are not hashed again."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        if not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"{folder} is not a checkpoint: expected a folder "
                                  "RUN_DIR/checkpoints/step_NNNNNNN holding model.safetensors "
                                  f"and {MANIFEST}")
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: the save did not finish")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({e})") from e
    for rel in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        if rel not in files:
            raise CheckpointError(f"checkpoint {folder}: {MANIFEST} does not list {rel}")
    for rel, info in files.items():
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder}: {rel} is missing")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {folder}: {rel} has {size} bytes but the manifest says "
                f"{info['bytes']}: the file is truncated or was overwritten; refusing to load it")
    if not check_hashes:
        return manifest
    key, fingerprint = folder.resolve(), _fingerprint(folder, files)
    if _VERIFIED.get(key, (None,))[0] == fingerprint:
        return manifest
    for rel, info in files.items():
        if sha256_file(folder / rel) != info["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {rel} does not match its sha256 in the "
                                  "manifest: the file is corrupt; refusing to load it")
    _VERIFIED[key] = (fingerprint, manifest)
    return manifest


def find_latest(root: Path, skipped: list[Path] | None = None) -> Path | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning (and
    appended to ``skipped``, newest first, when given)."""
    for folder in reversed(list_checkpoints(root)):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            if skipped is not None:
                skipped.append(folder)
    return None


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(Path(folder) / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"checkpoint {folder}: model.safetensors cannot be read ({e})") from e
    for tied, source in TIED_KEYS.items():
        if source in state and tied not in state:  # a tied head is saved once, as its source
            state[tied] = state[source]
    return state


def load_trainer_state(folder: Path) -> CheckpointState:
    raw = json.loads((Path(folder) / "trainer_state.json").read_text())
    return CheckpointState(step=raw["step"], data=raw["data"], tokens_seen=raw["tokens_seen"],
                           world_size=raw["world_size"], extra=raw.get("extra", {}),
                           tokenizer_hash=raw.get("tokenizer_hash"))


def checkpoint_tokenizer_hash(folder: str | Path) -> str | None:
    """The hash (``codegpt.tokenizer.bpe.tokenizer_hash``) of the tokenizer whose ids a
    checkpoint's model was trained on; None where the checkpoint records none."""
    return load_trainer_state(Path(folder)).tokenizer_hash


def load_torch(folder: Path, name: str) -> Any:
    path = Path(folder) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {folder}: {name} cannot be read ({e})") from e


def resolve_checkpoint(path: str | Path, skipped: list[Path] | None = None) -> Path:
    """A checkpoint folder that verifies: ``path`` itself, or the newest complete checkpoint of
    a run folder (``path/checkpoints/step_*``) or of a checkpoints folder (``path/step_*``);
    the newer ones that failed to verify are appended to ``skipped`` when given."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if list_checkpoints(root):
            latest = find_latest(root, skipped)
            if latest is None:
                raise CheckpointError(f"no complete checkpoint in {root}: every one failed to "
                                      "verify (see the warnings above)")
            return latest
    verify(path)
    return path


def checkpoint_config(folder: str | Path) -> dict:
    """The resolved run config a checkpoint was saved with (its config.yaml), as a mapping;
    ``model`` without ``size`` (already expanded)."""
    path = Path(folder) / "config.yaml"
    try:
        raw = load_yaml(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as e:
        raise CheckpointError(f"checkpoint {folder}: config.yaml is not valid YAML ({e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"checkpoint {folder} has no config.yaml with a model section: "
                              "cannot tell which model it holds")
    raw["model"] = {k: v for k, v in raw["model"].items() if k != "size"}
    return raw


def fim_training(folder: str | Path, depth: int = 8) -> dict | None:
    """How the model of a checkpoint learned fill-in-the-middle: ``{"fim_rate", "fim_spm_rate",
    "checkpoint"}`` of the run that trained it with ``data.fim_rate`` > 0, as the checkpoint
    records it (the trainer writes it, inherited through ``init_from``), or else of the first
    such run along its ``init_from`` chain (itself, then the checkpoint it was fine-tuned from,
    ...: checkpoints from before the record); None if none did (or the chain is gone)."""
    try:
        extra = load_trainer_state(Path(folder)).extra
    except (OSError, ValueError, KeyError):
        extra = {}
    if "fim" in extra:
        fim = extra["fim"]
        return fim if isinstance(fim, dict) and isinstance(fim.get("fim_rate"), (int, float)) \
            and isinstance(fim.get("fim_spm_rate"), (int, float)) else None
    for _ in range(depth):
        try:
            raw = checkpoint_config(folder)
        except CheckpointError:
            return None
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        rate = data.get("fim_rate") or 0
        if isinstance(rate, (int, float)) and rate > 0:
            spm = data.get("fim_spm_rate", 0.5)
            return {"fim_rate": float(rate),
                    "fim_spm_rate": float(spm) if isinstance(spm, (int, float)) else 0.5,
                    "checkpoint": str(folder)}
        parent = raw.get("init_from")
        if not parent or not Path(str(parent)).is_dir():
            return None
        folder = Path(str(parent))
    return None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(name: str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` (or None): bfloat16 on a GPU that has it, else float32; or a name in DTYPES."""
    if name in (None, "auto"):
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_checkpoint_model(folder: str | Path, device: str | torch.device = "cpu",
                          dtype: str | torch.dtype | None = None) -> tuple[GPT, ModelConfig]:
    """The model of a checkpoint folder (its config.yaml's ``model:`` section and weights),
    in eval mode on ``device``, its weights in ``dtype`` (a torch dtype or a name for
    ``inference_dtype``; float32 on CPU by default). ``folder`` may also be a run folder or its
    ``checkpoints/``: its newest complete checkpoint is used. Raises CheckpointError for a
    missing or corrupt checkpoint."""
    return _load_model(resolve_checkpoint(folder), device, dtype)


def _load_model(folder: Path, device: str | torch.device = "cpu",
                dtype: str | torch.dtype | None = None) -> tuple[GPT, ModelConfig]:
    """``load_checkpoint_model`` of a folder that ``resolve_checkpoint`` already verified."""
    try:
        cfg = from_dict(ModelConfig, checkpoint_config(folder)["model"], prefix="model.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {folder}: config.yaml has no usable model section ({e})"
                              ) from e
    model = GPT(cfg)
    state = load_model_state(folder)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {folder}: weights do not fit its model config ({e})"
                              ) from e
    if not isinstance(dtype, torch.dtype):
        dtype = inference_dtype(dtype, device)
    return model.to(device=device, dtype=dtype).eval(), cfg


def checkpoint_tokenizer(folder: str | Path, tokenizer: str | Path, vocab_size: int):
    """The tokenizer ``tokenizer`` (a folder or tokenizer.json) for the checkpoint ``folder`` (a
    checkpoint folder, as ``resolve_checkpoint`` returns), as ``load_tokenizer`` gives it: every
    path that runs a checkpoint's model gets its tokenizer here. A tokenizer of another size, or
    whose hash differs from the one the checkpoint records, is a TokenizerError; a checkpoint
    that records no hash is checked by the vocabulary size alone, with a warning."""
    tok = load_tokenizer(tokenizer, vocab_size=vocab_size)
    recorded = checkpoint_tokenizer_hash(folder)
    if recorded is None:
        log.warning("checkpoint %s records no tokenizer hash (saved before checkpoints recorded "
                    "it, or trained on token shards without one): only the vocabulary size of "
                    "the tokenizer %s is checked", folder, tokenizer)
        return tok
    actual = tokenizer_hash(tokenizer)
    if actual != recorded:
        raise TokenizerError(
            f"checkpoint {folder} was trained on the ids of the tokenizer with hash "
            f"{recorded[:12]}, but the tokenizer {tokenizer} has hash {actual[:12]} (another "
            "tokenizer of the same size): use the tokenizer the model was trained with")
    return tok


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model with its tokenizer, and which checkpoint was used."""

    model: GPT
    config: ModelConfig
    tokenizer: Any                 # a tokenizers.Tokenizer (``load_tokenizer``)
    folder: Path                   # the checkpoint folder resolved from what was asked
    step: int                      # its training step
    newest: bool                   # the newest checkpoint of its folder
    skipped: list[Path]            # newer checkpoints of the run that failed to verify

    def record(self, asked: str | Path) -> dict:
        """What results.json records: what was asked for and the checkpoint used."""
        return {"checkpoint": str(asked), "checkpoint_folder": str(self.folder),
                "checkpoint_step": self.step, "checkpoint_newest": self.newest,
                "checkpoints_skipped": [str(p) for p in self.skipped]}


def load_checkpoint_and_tokenizer(path: str | Path, tokenizer: str | Path,
                                  device: str | torch.device = "cpu",
                                  dtype: str | torch.dtype | None = None) -> LoadedCheckpoint:
    """``path`` (a checkpoint, or a run folder: its newest checkpoint that verifies) resolved
    once, its model (``load_checkpoint_model``) and its tokenizer (``checkpoint_tokenizer``).
    A checkpoint older than the newest of its run folder is used with a warning."""
    skipped: list[Path] = []
    folder = resolve_checkpoint(path, skipped)
    skipped.reverse()  # oldest first
    if skipped:
        log.warning("%s: using %s, not the newest checkpoint there: %s failed to verify (see "
                    "above)", path, folder.name, ", ".join(p.name for p in skipped))
    model, cfg = _load_model(folder, device, dtype)
    tok = checkpoint_tokenizer(folder, tokenizer, cfg.vocab_size)
    newest = [p.name for p in list_checkpoints(folder.parent)[-1:]] == [folder.name]
    return LoadedCheckpoint(model, cfg, tok, folder, load_trainer_state(folder).step, newest,
                            skipped)
