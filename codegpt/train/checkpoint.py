"""Training checkpoints: when a run saves, what it keeps, what it resumes from, and writing
them atomically with every rank's RNG state.

``CheckpointManager`` is the trainer's one handle on its checkpoints, built from the
``checkpoint`` config section (with run.resume and out_dir). ``save_checkpoint`` writes the
layout (``codegpt.checkpoint``, which reads and verifies them) into ``.tmp_step_NNNNNNN/`` and
renames it into place only when complete, so a kill at any moment leaves either the old set of
checkpoints or the old set plus one whole new one. Every rank saves its RNG state, so a resumed
run continues the same random streams.

The ranks of a run, on one node or many, share one run folder: out_dir must be on a filesystem
every node sees. Where it is not (a node-local disk, a relative out_dir in each node's own
checkout), a save whose temporary folder lacks a rank's RNG state and a resume whose ranks find
different checkpoints are errors on every rank, never a checkpoint without that rank's state or
ranks that train different models.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file

from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)

from codegpt.checkpoint import (MANIFEST, TIED_KEYS, TMP_PREFIX, CheckpointState, find_latest,
                                list_checkpoints, load_model_state, load_torch,
                                load_trainer_state, step_dir_name, verify)
from codegpt.config import yaml_text
from codegpt.errors import CheckpointError
from codegpt.io import atomic_write_json, fsync_dir, sha256_file
from codegpt.outputs import is_disk_full, swap_in
from codegpt.train.batches import DistributedBatches
from codegpt.train.config import CheckpointSection, TrainConfig
from codegpt.train.optim import ScheduledOptimizer
from codegpt.train.start import check_resume_config

log = logging.getLogger(__name__)


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


def rng_name(rank: int) -> str:
    return f"rng/rank_{rank:05d}.pt"


def _missing_rng(tmp: Path, world: int) -> str | None:
    """Rank 0's check, once every rank has written: which ranks' RNG states the temporary
    folder ``tmp`` lacks, and why that is (None when it holds all ``world``)."""
    missing = [r for r in range(world) if not (tmp / rng_name(r)).is_file()]
    if not missing:
        return None
    return (f"rank(s) {', '.join(map(str, missing))} could not write their RNG state into rank "
            f"0's run folder {tmp.parent.parent.resolve()} (on host {socket.gethostname()}): "
            "every node must see out_dir on one shared filesystem; a relative out_dir in each "
            "node's own checkout, or a node-local disk, gives every node a run folder of its own")


def save_checkpoint(root: Path, step: int, *, model_state: dict | None, optim_state: dict | None,
                    sched_state: dict | None, trainer_state: dict | None, config_yaml: str | None,
                    rank: int, barrier, keep_last: int, tokenizer_hash: str | None = None,
                    tied: bool = True, world: int = 1,
                    from_rank0: Callable[[Any], Any] | None = None) -> Path:
    """Collective save: every rank calls it; rank 0 writes the shared files.

    ``model_state`` etc. are the full (gathered) states, needed on rank 0 only.
    ``barrier`` synchronises ranks (a no-op for one process). ``tokenizer_hash`` (the hash of
    the tokenizer the training ids come from, when known) goes into trainer_state.json, which
    the manifest covers; ``checkpoint_tokenizer_hash`` reads it back. ``tied``: the output head
    is the token embedding, saved once (as the embedding).

    Every one of the ``world`` ranks writes its RNG state into the temporary folder rank 0
    made, and never makes that folder itself: a rank that does not see rank 0's folder (another
    node's out_dir on a disk of its own) writes nothing, and rank 0 finds its file missing. That
    is a CheckpointError on every rank (``from_rank0``: rank 0's value on every rank, a
    collective call; needed with more than one rank), and the temporary folder is removed.
    """
    root = Path(root)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}"
    final = root / step_dir_name(step)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    try:
        if (tmp / "rng").is_dir():
            _write(tmp / rng_name(rank), lambda p: torch.save(rng_state(), p))
        if rank == 0:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()
                       if not (tied and k in TIED_KEYS)}
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
        problem = _missing_rng(tmp, world) if rank == 0 else None
        if world > 1:
            problem = from_rank0(problem)
        if problem:
            raise CheckpointError(f"checkpoint {final.name}: {problem}")
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
    """Delete all but the newest ``keep_last`` (at least 1: checkpoint.keep_last's range)
    complete checkpoints. Unfinished temporary folders are ``remove_stale_tmp``'s."""
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_tmp(root: Path) -> None:
    """Delete the temporary folders of saves that did not finish (a kill, a full disk)."""
    for tmp in Path(root).glob(f"{TMP_PREFIX}step_*"):
        log.warning("removing unfinished checkpoint %s (a save was interrupted)", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def load_rng(folder: Path, rank: int) -> dict | None:
    name = rng_name(rank)
    return load_torch(folder, name) if (Path(folder) / name).is_file() else None


class CheckpointManager:
    """A training run's checkpoints, from the ``checkpoint`` config section (``every``,
    ``keep_last``), ``resume`` (run.resume) and the run folder ``out_dir``.

    It decides when to save (``due``, ``due_on_stop``), keeps the newest ``keep_last``, finds
    what a run resumes from (``restore``), and saves and loads everything a resumed run needs to
    continue bit for bit: the model and optimizer states of ``model`` and ``optim`` (gathered
    whole to rank 0 and offloaded to the CPU, so an FSDP-sharded model saves and loads like any
    other), the schedule's state, the data position of ``batches``, every rank's RNG state and
    the trainer's counters. ``config`` (the run's resolved config) goes into every checkpoint,
    with ``tokenizer_hash`` (the hash of the tokenizer the data's ids come from, when known).

    ``restore``, ``resume_point``, ``load``, ``load_weights`` and ``save`` are collective:
    every rank calls them.
    ``last`` is the newest whole checkpoint of this run (saved or resumed), None before one."""

    def __init__(self, section: CheckpointSection, resume: str, out_dir: str | Path,
                 accelerator, *, config: TrainConfig, tokenizer_hash: str | None,
                 model: torch.nn.Module, optim: ScheduledOptimizer, batches: DistributedBatches):
        self.section, self.resume = section, resume
        self.root = Path(out_dir) / "checkpoints"
        self.accelerator = accelerator
        self.config, self.tokenizer_hash = config, tokenizer_hash
        self.model, self.optim, self.batches = model, optim, batches
        self.last: Path | None = None
        # whole states on rank 0's CPU: what the files hold, whatever the sharding
        self._options = StateDictOptions(full_state_dict=True, cpu_offload=True)

    # --- when -------------------------------------------------------------------------------

    def due(self, step: int, last_step: int, out_of_time: bool) -> bool:
        """Whether update ``step`` ends with a save: every ``every`` steps, at the run's last
        step (``last_step``), and at the update after which the time budget is spent."""
        every = self.section.every
        return bool(every and step % every == 0) or step == last_step or out_of_time

    def due_on_stop(self, step: int) -> bool:
        """Whether a run stopped by a signal after update ``step`` must still save it."""
        return not self.holds(step)

    def holds(self, step: int) -> bool:
        """Whether the newest checkpoint is of update ``step``."""
        return self.last is not None and self.last.name == step_dir_name(step)

    # --- what a run starts from -------------------------------------------------------------

    def restore(self, init_from: Path | None) -> CheckpointState | None:
        """Start the run where it should: from its own newest whole checkpoint (``resume_point``)
        if it has one, which wins over ``init_from``; otherwise from ``init_from``'s weights
        (a checkpoint folder already checked to fit), or from scratch. Returns the resumed
        checkpoint's state, None for a run that starts at step 0."""
        main = self.accelerator.is_main_process
        folder = self.resume_point()
        if folder is not None:
            state = self.load(folder)
            if main:
                log.info("resumed from %s at step %d", folder, state.step)
            return state
        if init_from is not None:
            self.load_weights(init_from)
            if main:
                log.info("starting from the weights of %s", init_from)
        return None

    def resume_point(self) -> Path | None:
        """The checkpoint run.resume names: auto, the newest whole one in the run folder (an
        interrupted save's temporary folder is removed, a damaged checkpoint skipped); never,
        none; a path, that checkpoint, which must be whole (an error, never skipped). Every
        rank looks, and every rank must find the same (``_same_on_every_rank``)."""
        if self.resume == "never":
            return None
        found, error = None, None
        try:
            if self.resume == "auto":
                if self.accelerator.is_main_process:
                    remove_stale_tmp(self.root)
                self.accelerator.wait_for_everyone()
                found = find_latest(self.root)
            else:
                found = Path(self.resume)
                verify(found)
        except CheckpointError as e:
            error = e
        self._same_on_every_rank(found, error)
        if error is not None:
            raise error
        return found

    def _same_on_every_rank(self, found: Path | None, error: CheckpointError | None) -> None:
        """Raise a CheckpointError on every rank unless all of them found the same checkpoint
        to resume from (``found``), or failed with the same ``error``: ranks that see different
        run folders (out_dir on node-local disks) would otherwise start from different weights
        and steps, train different models and wait forever for each other at the end. A
        collective call."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        mine = (str(found) if found is not None else None, str(error) if error else None)
        views: list = [None] * acc.num_processes
        torch.distributed.all_gather_object(views, (socket.gethostname(), *mine))
        if all(view[1:] == views[0][1:] for view in views):
            return

        def seen(rank: int) -> str:
            host, folder, problem = views[rank]
            what = problem or (f"resumes from {folder}" if folder else "finds no checkpoint")
            return f"rank {rank} on host {host} {what}"

        others = [seen(r) for r in range(1, acc.num_processes) if views[r][1:] != views[0][1:]]
        raise CheckpointError(
            f"the ranks do not find the same checkpoint in {self.root}: {seen(0)}, but "
            f"{'; '.join(others)}. Every node must see out_dir on one shared filesystem; a "
            "relative out_dir in each node's own checkout, or a node-local disk, gives every "
            "node a run folder of its own")

    def load(self, folder: Path) -> CheckpointState:
        """Load all of ``folder`` into the run: weights, optimizer state, data position and
        (on as many processes as wrote it) every rank's RNG state; returns the trainer state
        (step, tokens seen, ``extra``), which the caller continues from. A config that differs
        from the checkpoint's is said first (``check_resume_config``). The lr is not loaded:
        the schedule gives the next update's as configured now (run.max_steps may have been
        raised to extend a finished run); scheduler.pt, where there is one, is not read."""
        acc = self.accelerator
        check_resume_config(folder, self.config, warn=acc.is_main_process)
        state = load_trainer_state(folder)
        self.load_weights(folder)
        optim_sd = load_torch(folder, "optimizer.pt")
        for group in optim_sd.get("param_groups", []):
            # an earlier codegpt's LambdaLR added its base lr to every group; this optimizer's
            # groups have no such key, which set_optimizer_state_dict refuses
            group.pop("initial_lr", None)
        set_optimizer_state_dict(self.model, self.optim.optimizers, optim_sd,
                                 options=self._options)
        for opt in self.optim.optimizers:  # the offloading load turned tuples (betas) to lists
            for group in opt.param_groups:
                for key, default in opt.defaults.items():
                    if isinstance(default, tuple) and isinstance(group.get(key), list):
                        group[key] = tuple(group[key])
        if state.world_size != acc.num_processes:
            log.warning("checkpoint was written by %d process(es), resuming on %d: the data order "
                        "continues exactly, per-rank RNG streams are re-seeded",
                        state.world_size, acc.num_processes)
        self.batches.load_state_dict(state.data)
        rng = (load_rng(folder, acc.process_index) if state.world_size == acc.num_processes
               else None)
        if rng is not None:
            set_rng_state(rng)  # last: nothing after it may draw from the restored streams
        self.last = folder
        return state

    def load_weights(self, folder: Path) -> None:
        """The model weights of a checkpoint (a resumed run's, or init_from's)."""
        set_model_state_dict(self.model, load_model_state(folder), options=self._options)

    # --- saving -----------------------------------------------------------------------------

    def save(self, step: int, tokens_seen: int, extra: dict) -> Path:
        """Save the run after update ``step`` (``tokens_seen`` training tokens; ``extra``: more
        of the trainer's state, e.g. ``elapsed_s``), keep the newest ``keep_last``, and return
        the checkpoint's folder."""
        acc = self.accelerator
        model_sd = get_model_state_dict(self.model, options=self._options)
        optim_sd = get_optimizer_state_dict(self.model, self.optim.optimizers,
                                            options=self._options)
        trainer_state = {"step": step, "data": self.batches.state_dict(),
                         "tokens_seen": tokens_seen, "world_size": acc.num_processes,
                         "extra": extra}
        path = save_checkpoint(
            self.root, step, model_state=model_sd, optim_state=optim_sd,
            sched_state=self.optim.schedule_state(step), trainer_state=trainer_state,
            config_yaml=yaml_text(self.config), rank=acc.process_index,
            barrier=acc.wait_for_everyone, keep_last=self.section.keep_last,
            tokenizer_hash=self.tokenizer_hash, tied=self.config.model.tie_embeddings,
            world=acc.num_processes, from_rank0=self._from_rank0)
        self.last = path
        if acc.is_main_process:
            log.info("saved checkpoint %s", path)
        return path

    def _from_rank0(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank: a collective call."""
        shared = [value]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def remove_unfinished(self) -> None:
        """Remove an interrupted save's temporary folder (after a failure: it frees the space a
        full disk needs for the status file)."""
        remove_stale_tmp(self.root)
