"""The training loop: a thin composition of model, data, optimizer, schedule, checkpoints and
metrics, run through accelerate so the same code serves one CPU, one GPU, DDP and FSDP.

``Trainer.fit`` is the loop. The policies live beside it, each built from its own config
section: ``setup.py`` (the accelerator), ``start.py`` (the data, and the checks of what a run
starts from), ``optim.py`` and ``schedule.py`` (AdamW and the lr of every update),
``checkpoint.py`` (when to save, what to keep, what to resume from), ``budget.py`` (the
wall-time budget), ``signals.py`` (preemption) and ``status.py`` (status.json, the progress bar).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codegpt import checkpoint as cp
from codegpt.config import to_dict, yaml_text
from codegpt.errors import CodegptError, NonFiniteLossError
from codegpt.io import atomic_write_text
from codegpt.model import GPT
from codegpt.outputs import check_output, writing_in_place
from codegpt.train.batches import (DistributedBatches, as_tensors, loss_tokens, plan_batch,
                                   val_batches)
from codegpt.train.budget import TimeBudget
from codegpt.train.checkpoint import CheckpointManager
from codegpt.train.config import TrainConfig
from codegpt.train.flops import flops_per_token, mfu, peak_flops
from codegpt.train.metrics import MetricsLogger
from codegpt.train.optim import ScheduledOptimizer
from codegpt.train.setup import build_accelerator, end_process_group, keep_host_memory
from codegpt.train.signals import StopFlag
from codegpt.train.start import (ABSENT, check_resume_config, config_changes, flat_config,
                                 log_data, open_data, resolve_start)
from codegpt.train.status import ProgressBar, StatusFile, failure_reason

# the names other modules import from here (the config checks are start.py's, kept here too)
__all__ = ["ABSENT", "PREEMPTED_EXIT_CODE", "NonFiniteLossError", "TrainResult", "Trainer",
           "check_resume_config", "config_changes", "flat_config", "train"]

log = logging.getLogger(__name__)

# Exit status after a SIGTERM/SIGUSR1 made the run save and stop (EX_TEMPFAIL: "try again").
# The Slurm script requeues the job on it; a finished run exits 0.
PREEMPTED_EXIT_CODE = 75


@dataclass
class TrainResult:
    step: int
    status: str            # finished | preempted
    last_checkpoint: Path | None
    final_loss: float | None


class Trainer:
    """One training run of ``cfg``: built (and checked) here, run by ``fit``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        check_output(cfg.out_dir, "train")  # a path it may not write is refused before any work
        self.run_dir = Path(cfg.out_dir)
        if cfg.run.keep_host_memory:
            keep_host_memory()
        self.accelerator = acc = build_accelerator(cfg.run)
        self.rank, self.world = acc.process_index, acc.num_processes

        data = open_data(cfg)
        self.init_from = resolve_start(cfg, data)
        # how the model learned fill-in-the-middle, recorded in every checkpoint: this run's
        # rates, or those of the checkpoint it starts from (a fine-tuned model keeps what its
        # pretraining taught it, even when that run's folder is gone)
        self.fim = ({"fim_rate": cfg.data.fim_rate, "fim_spm_rate": cfg.data.fim_spm_rate,
                     "checkpoint": str(cfg.out_dir)} if cfg.data.fim_rate
                    else cp.fim_training(self.init_from) if self.init_from else None)
        if acc.is_main_process:
            log_data(cfg, data)
        self.global_batch, self.accum = plan_batch(cfg.batch.global_batch_tokens, cfg.seq_len,
                                                   cfg.batch.micro_batch_size, self.world)
        self.val_data = data.val
        self.batches = DistributedBatches(data.train, self.global_batch,
                                          cfg.batch.micro_batch_size, self.rank, self.world,
                                          cfg.run.seed)

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        model = GPT(cfg.model)
        self.optim = ScheduledOptimizer(model, cfg.optim, cfg.run.max_steps)
        if cfg.run.compile:
            model = torch.compile(model)
        self.model = self.optim.prepare(acc, model)
        if acc.is_main_process:
            log.info("%d process(es), %s%s, device %s", self.world, acc.distributed_type.value,
                     " (FSDP2: parameters sharded with fully_shard)" if acc.is_fsdp2 else "",
                     acc.device)
        # per-rank streams: dropout (torch), and Python's and numpy's (saved in checkpoints
        # with torch's; seeded, so that two runs of one seed write the same rng files)
        rank_seed = cfg.run.seed + 1000 * (self.rank + 1)
        torch.manual_seed(rank_seed)
        random.seed(rank_seed)
        np.random.seed(rank_seed % 2**32)

        self.ckpts = CheckpointManager(cfg.checkpoint, cfg.run.resume, cfg.out_dir, acc,
                                       config=cfg, tokenizer_hash=data.tokenizer_hash,
                                       model=self.model, optim=self.optim, batches=self.batches)
        self.budget = TimeBudget(cfg.run.max_minutes, acc)
        self.status = StatusFile(self.run_dir)
        self.stop = StopFlag()
        self.step = 0
        self.tokens_seen = 0
        self.started = False  # whether this run has written to its folder yet
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)
        device_name = torch.cuda.get_device_name() if acc.device.type == "cuda" else None
        self.peak = cfg.logging.peak_flops or peak_flops(device_name)

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to run.max_steps, the time budget or a stop signal, in a run folder that this
        run alone writes to; its marker says complete once the run finished.

        The budget's clock is read once before the loop (a resumed run whose checkpoint spent
        it does nothing) and once after each update, before its checkpoint, so the checkpoint
        of the last update records a spent budget; the lr of the next update follows that same
        reading."""
        cfg, acc = self.cfg, self.accelerator
        status, loss = "finished", None
        with self._claim() as place:
            with self._failure_recorded():
                metrics = self._start()
                progress = ProgressBar(acc.is_main_process, self.step, cfg.run.max_steps,
                                       self.budget)
                with self.stop, contextlib.closing(metrics), contextlib.closing(progress):
                    self.budget.start()
                    while self.step < cfg.run.max_steps and not self.budget.spent:
                        if self.stop.requested(acc):
                            status = "preempted"
                            break
                        record = self._update()
                        loss = record["loss"]
                        metrics.log(record)
                        progress.update(self.step, loss, record["tokens_per_s"])
                        if self.val_data is not None and self.step % cfg.data.val_every == 0:
                            metrics.log({"step": self.step, "val_loss": self.evaluate()})
                        self.budget.read()  # before the save: its checkpoint has it
                        if self.ckpts.due(self.step, cfg.run.max_steps, self.budget.spent):
                            self._save()
                    if status == "preempted" and self.ckpts.due_on_stop(self.step):
                        self._save()
                    self._finish(status)
            if place is not None and status == "finished":
                place.complete(self._finished_files())
        return TrainResult(self.step, status, self.ckpts.last, loss)

    def _start(self) -> MetricsLogger:
        """Resume the run from its own checkpoint, or start it from init_from's weights or from
        scratch; from here on it writes to its folder: its config, its status and its metrics
        log, which is returned."""
        cfg, main = self.cfg, self.accelerator.is_main_process
        state = self.ckpts.restore(self.init_from)
        if state is not None:
            self.step, self.tokens_seen = state.step, state.tokens_seen
            self.budget.resume(state.extra.get("elapsed_s", 0.0))
        self.started = True
        if main:
            atomic_write_text(self.run_dir / "config.yaml", yaml_text(cfg))
            self._write_status("running")
        return MetricsLogger(
            self.run_dir, enabled=main, resume_step=self.step if state is not None else None,
            wandb_cfg={"mode": cfg.logging.wandb_mode, "project": cfg.logging.wandb_project}
            if cfg.logging.wandb else None,
            config=to_dict(cfg))

    def _update(self) -> dict:
        """The next update, at the schedule's lr for it; returns its metrics record."""
        lr = self.optim.set_lr(self.step + 1, self.budget.fraction)
        t0 = time.perf_counter()
        loss, grad_norm, n_loss = self.train_step()
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.step += 1
        tokens = self.global_batch * self.cfg.seq_len
        self.tokens_seen += tokens
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens": self.tokens_seen, "loss_tokens": n_loss, "tokens_per_s": tokens / dt,
                "step_time_s": dt, "elapsed_s": round(self.budget.elapsed(), 3),
                "mfu": mfu(tokens / dt, self.flops_per_token, self.world, self.peak),
                "epoch": self.batches.position.epoch}

    def _save(self) -> None:
        """Checkpoint the run after its current update; the status file names the newest whole
        checkpoint at all times."""
        self.ckpts.save(self.step, self.tokens_seen,
                        {"global_batch": self.global_batch, "accum": self.accum,
                         "elapsed_s": self.budget.elapsed(), "fim": self.fim})
        if self.accelerator.is_main_process:
            self._write_status("running")

    def _finish(self, status: str) -> None:
        """Say how the loop ended (``status``), in the log and the status file."""
        if not self.accelerator.is_main_process:
            return
        if status == "preempted":
            log.warning("received signal %s: saved step %d, exiting with code %d so the job can "
                        "be requeued", self.stop.signum, self.step, PREEMPTED_EXIT_CODE)
        reason = self.budget.reason if self.budget.spent else None
        if reason is not None:  # its last update's checkpoint is saved
            log.info("%s: finished at step %d of %d", reason, self.step, self.cfg.run.max_steps)
        self._write_status(status, **({"reason": reason} if reason else {}))

    # --- steps -------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer update over the global batch; returns (loss, grad norm, loss tokens).

        The loss is the mean over the loss tokens of the whole global batch, however they fall
        into micro-batches and processes (SFT micro-batches hold different numbers): each
        micro-batch's mean times its count is its token sum, and the gradient of sum / N is
        taken, N counted over all ranks before the first backward; the data-parallel gradient
        average over ranks is undone by the factor world."""
        acc, model = self.accelerator, self.model
        model.train()
        micro_batches = self.batches.next_step()
        counts = [loss_tokens(y) for _, y in micro_batches]
        total = acc.reduce(torch.tensor(sum(counts), device=acc.device), reduction="sum")
        loss_sum = torch.zeros((), device=acc.device)
        for i, ((x, y), n) in enumerate(zip(micro_batches, counts)):
            x = x.to(acc.device, non_blocking=True)
            y = y.to(acc.device, non_blocking=True)
            sync = i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                _, loss = model(x, y)  # the mean over this micro-batch's n loss tokens
                token_sum = loss * n
                acc.backward(token_sum * (self.world / total))
            loss_sum += token_sum.detach().float()
        loss = (acc.reduce(loss_sum, reduction="sum") / total).item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(self._nonfinite_message("loss", loss))
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._nonfinite_message("gradient norm", grad_norm))
        self.optim.step()
        return loss, grad_norm, int(total.item())

    def _nonfinite_message(self, what: str, value: float) -> str:
        last = self.ckpts.last
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        return (f"{what} is {value} at step {self.step + 1}; stopping before the update so the "
                f"weights stay finite ({where}). Lower optim.lr, raise optim.warmup_steps or check "
                "the data, then resume.")

    @torch.no_grad()
    def evaluate(self) -> float:
        acc = self.accelerator
        self.model.eval()
        micro, data = self.cfg.batch.micro_batch_size, self.val_data
        total = torch.zeros(2, device=acc.device, dtype=torch.float64)
        batches = val_batches(data, self.cfg.data.val_sequences, micro, self.rank, self.world)
        # Every rank runs as many forwards as rank 0, which has the most sequences: under FSDP a
        # forward all-gathers the parameters, and a rank that stopped early would leave the
        # others waiting for it forever. A rank whose share has run out scores a filler batch
        # and discards the result.
        n_val = min(self.cfg.data.val_sequences, len(data))
        for _ in range(math.ceil(math.ceil(n_val / self.world) / micro)):
            batch = next(batches, None)
            x, y = batch or as_tensors(data.batch(range(min(micro, n_val))))
            _, loss = self.model(x.to(acc.device), y.to(acc.device))
            if batch is None:
                continue
            n = loss_tokens(y)  # the mean over the loss tokens of all scored sequences
            total += torch.tensor([loss.double().item() * n, n], device=acc.device,
                                  dtype=torch.float64)
        total = acc.reduce(total, reduction="sum")
        return float(total[0] / total[1])

    # --- the run folder ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _claim(self):
        """The run folder for this run alone (``codegpt.outputs.writing_in_place``: its lock
        and marker) on the main process; every process learns whether it could be had."""
        main = self.accelerator.is_main_process
        with contextlib.ExitStack() as stack:
            place, error = None, None
            if main:
                try:
                    place = stack.enter_context(writing_in_place(self.run_dir, "train"))
                except CodegptError as e:
                    error = e
            if self.world > 1:
                shared = [str(error) if error is not None else None]
                torch.distributed.broadcast_object_list(shared, src=0)
                if shared[0] is not None and error is None:
                    raise CodegptError(shared[0])
            if error is not None:
                raise error
            yield place

    @contextlib.contextmanager
    def _failure_recorded(self):
        """A failure inside is recorded in the status file, then raised; a run refused before
        it wrote to its folder changes nothing there."""
        try:
            yield
        except BaseException as e:
            if self.accelerator.is_main_process and self.started:
                self._record_failure(e)
            raise

    def _record_failure(self, e: BaseException) -> None:
        """What the status file says after a run failed: the reason and the last checkpoint
        that was saved whole (an interrupted save's temporary folder is removed first, which
        also frees the space a full disk needs for the status file)."""
        reason = failure_reason(e, self.run_dir)  # first: a full disk is still full
        self.ckpts.remove_unfinished()
        with contextlib.suppress(Exception):
            self._write_status("failed", reason=reason)

    def _write_status(self, status: str, **extra) -> None:
        self.status.write(status, self.step, self.ckpts.last, **extra)

    def _finished_files(self) -> list[Path]:
        """What the marker of a finished run lists: the files the next stage reads."""
        files = [self.run_dir / n for n in ("config.yaml", "status.json", "metrics.jsonl")]
        if self.ckpts.last is not None:
            files.append(self.ckpts.last / cp.MANIFEST)
        return [f.resolve() for f in files if f.is_file()]


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg``'s run: the work of a training process (``codegpt train``, ``train.py``).

    A run that returns, finished or preempted, destroys the process group its launch made
    (``end_process_group``) on every rank, so no rank can abort at exit: that would turn its
    exit code 0, or the 75 that requeues a job, into a failure, and under torchrun leave the
    other nodes' launchers waiting for this one. A process group the caller made is left to
    it; a failed run leaves it to the process's exit, which reports a failure either way."""
    made_here = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    result = Trainer(cfg).fit()
    if made_here:
        end_process_group()
    return result
