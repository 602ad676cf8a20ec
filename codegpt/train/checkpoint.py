"""Atomic, verifiable training checkpoints.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` holding::

    model.safetensors     full model weights (fp32; the tied head is stored once)
    optimizer.pt          full AdamW state
    scheduler.pt          LambdaLR state
    trainer_state.json    step, data position, tokens seen, world size, and the hash of the
                          tokenizer the model's ids come from (``checkpoint_tokenizer_hash``)
    rng/rank_NNNNN.pt     every rank's python / numpy / torch (/ cuda) RNG state
    config.yaml           the resolved run config
    manifest.json         size and sha256 of every file above, written last

Everything is written into ``.tmp_step_NNNNNNN/`` and renamed into place only when complete,
so a kill at any moment leaves either the old set of checkpoints or the old set plus one whole
new one. Loading checks the manifest; a truncated or altered file is an error that names it.

A checkpoint meets a tokenizer in one place, ``checkpoint_tokenizer``: a tokenizer whose hash
differs from the one the checkpoint records is refused (sampling, evaluation, export), so a
model is never run on the ids of another tokenizer of the same size.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from codegpt.errors import CheckpointError, TokenizerError
from codegpt.io import atomic_write_json, fsync_dir, sha256_file
from codegpt.outputs import is_disk_full, swap_in
from codegpt.model import GPT, ModelConfig

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


# --- RNG ---------------------------------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- writing -----------------------------------------------------------------------------

def _write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                  for p in files}
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def save_checkpoint(root: Path, step: int, *, model_state: dict | None, optim_state: dict | None,
                    sched_state: dict | None, trainer_state: dict | None, config_yaml: str | None,
                    rank: int, barrier, keep_last: int, tokenizer_hash: str | None = None) -> Path:
    """Collective save: every rank calls it; rank 0 writes the shared files.

    ``model_state`` etc. are the full (gathered) states, needed on rank 0 only.
    ``barrier`` synchronises ranks (a no-op for one process). ``tokenizer_hash`` (the hash of
    the tokenizer the training ids come from, when known) goes into trainer_state.json, which
    the manifest covers; ``checkpoint_tokenizer_hash`` reads it back.
    """
    root = Path(root)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}"
    final = root / step_dir_name(step)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    try:
        _write(tmp / "rng" / f"rank_{rank:05d}.pt", lambda p: torch.save(rng_state(), p))
        if rank == 0:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()
                       if k not in TIED_KEYS}
            _write(tmp / "model.safetensors", lambda p: save_file(tensors, str(p)))
            _write(tmp / "optimizer.pt", lambda p: torch.save(optim_state, p))
            _write(tmp / "scheduler.pt", lambda p: torch.save(sched_state, p))
            state = {**trainer_state,
                     **({"tokenizer_hash": tokenizer_hash} if tokenizer_hash else {})}
            _write(tmp / "trainer_state.json",
                   lambda p: p.write_text(json.dumps(state, indent=2, sort_keys=True)))
            if config_yaml is not None:
                _write(tmp / "config.yaml", lambda p: p.write_text(config_yaml))
        barrier()
        if rank == 0:
            write_manifest(tmp)
            fsync_dir(tmp)
    except Exception as e:
        # torch and safetensors report a full disk in their own words: tell it while the
        # partial files still fill it, then remove them
        full = is_disk_full(e, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from e
        raise
    if rank == 0:
        swap_in(tmp, final)  # an earlier run reached the same step: replaced once this is whole
        fsync_dir(root)
        prune(root, keep_last)
    barrier()
    return final


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and stale temp folders."""
    if keep_last < 1:
        return
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_tmp(root: Path) -> None:
    for tmp in Path(root).glob(f"{TMP_PREFIX}step_*"):
        log.warning("removing unfinished checkpoint %s (a save was interrupted)", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


# --- reading -----------------------------------------------------------------------------

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


def verify(folder: Path, check_hashes: bool = True) -> dict:
    """Raise CheckpointError unless every file in the manifest is present and intact."""
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
        if check_hashes and sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {rel} does not match its sha256 in the "
                                  "manifest: the file is corrupt; refusing to load it")
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
        if source in state:
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


def load_rng(folder: Path, rank: int) -> dict | None:
    name = f"rng/rank_{rank:05d}.pt"
    return load_torch(folder, name) if (Path(folder) / name).is_file() else None


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
    import yaml

    path = Path(folder) / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as e:
        raise CheckpointError(f"checkpoint {folder}: config.yaml is not valid YAML ({e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"checkpoint {folder} has no config.yaml with a model section: "
                              "cannot tell which model it holds")
    raw["model"] = {k: v for k, v in raw["model"].items() if k != "size"}
    return raw


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
    from codegpt.config import ConfigError, from_dict
    from codegpt.eval.generate import inference_dtype  # lazily: training never needs it

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
    from codegpt.tokenizer.bpe import load_tokenizer, tokenizer_hash

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
