"""Atomic, verifiable training checkpoints.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` holding::

    model.safetensors     full model weights (fp32; the tied head is stored once)
    optimizer.pt          full AdamW state
    scheduler.pt          LambdaLR state
    trainer_state.json    step, data position, tokens seen, world size
    rng/rank_NNNNN.pt     every rank's python / numpy / torch (/ cuda) RNG state
    config.yaml           the resolved run config
    manifest.json         size and sha256 of every file above, written last

Everything is written into ``.tmp_step_NNNNNNN/`` and renamed into place only when complete,
so a kill at any moment leaves either the old set of checkpoints or the old set plus one whole
new one. Loading checks the manifest; a truncated or altered file is an error that names it.
"""

from __future__ import annotations

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

from codegpt.errors import CheckpointError
from codegpt.io import atomic_write_json, fsync_dir, sha256_file
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
                    rank: int, barrier, keep_last: int) -> Path:
    """Collective save: every rank calls it; rank 0 writes the shared files.

    ``model_state`` etc. are the full (gathered) states, needed on rank 0 only.
    ``barrier`` synchronises ranks (a no-op for one process).
    """
    root = Path(root)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}"
    final = root / step_dir_name(step)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    _write(tmp / "rng" / f"rank_{rank:05d}.pt", lambda p: torch.save(rng_state(), p))
    if rank == 0:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()
                   if k not in TIED_KEYS}
        _write(tmp / "model.safetensors", lambda p: save_file(tensors, str(p)))
        _write(tmp / "optimizer.pt", lambda p: torch.save(optim_state, p))
        _write(tmp / "scheduler.pt", lambda p: torch.save(sched_state, p))
        _write(tmp / "trainer_state.json",
               lambda p: p.write_text(json.dumps(trainer_state, indent=2, sort_keys=True)))
        if config_yaml is not None:
            _write(tmp / "config.yaml", lambda p: p.write_text(config_yaml))
    barrier()
    if rank == 0:
        write_manifest(tmp)
        fsync_dir(tmp)
        if final.exists():  # an earlier run reached the same step: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
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


def find_latest(root: Path) -> Path | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for folder in reversed(list_checkpoints(root)):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
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
                           world_size=raw["world_size"], extra=raw.get("extra", {}))


def load_torch(folder: Path, name: str) -> Any:
    path = Path(folder) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {folder}: {name} cannot be read ({e})") from e


def load_rng(folder: Path, rank: int) -> dict | None:
    name = f"rng/rank_{rank:05d}.pt"
    return load_torch(folder, name) if (Path(folder) / name).is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder that verifies: ``path`` itself, or the newest complete checkpoint of
    a run folder (``path/checkpoints/step_*``) or of a checkpoints folder (``path/step_*``)."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if list_checkpoints(root):
            latest = find_latest(root)
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
    from codegpt.config import ConfigError, from_dict
    from codegpt.eval.generate import inference_dtype  # lazily: training never needs it

    folder = resolve_checkpoint(folder)
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
