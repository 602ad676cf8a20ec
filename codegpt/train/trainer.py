"""The training loop: a thin composition of model, data, optimizer, schedule, checkpoints and
metrics, run through accelerate so the same code serves one CPU, one GPU, DDP and FSDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)

from codegpt.config import to_dict
from codegpt.errors import ConfigError, NonFiniteLossError
from codegpt.io import atomic_write_json, atomic_write_text
from codegpt.model import GPT
from codegpt.tokenizer.encode import check_tokenizer
from codegpt.tokenizer.shards import SequenceIndex, read_meta
from codegpt.train import checkpoint as ckpt
from codegpt.train.batches import DistributedBatches, plan_batch, val_batches
from codegpt.train.config import TrainConfig
from codegpt.train.flops import flops_per_token, mfu, peak_flops
from codegpt.train.metrics import MetricsLogger
from codegpt.train.optim import build_optimizer
from codegpt.train.schedule import build_scheduler, lr_at

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


class StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop saves and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _precision(cfg: TrainConfig) -> str:
    if cfg.run.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return {"fp32": "no", "bf16": "bf16"}[cfg.run.precision]


def resolve_vocab(cfg: TrainConfig, meta: dict) -> None:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = int(meta["vocab_size"])
    elif cfg.model.vocab_size != meta["vocab_size"]:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} but the token shards in "
                          f"{cfg.data_dir} use a vocabulary of {meta['vocab_size']}; set "
                          "model.vocab_size=0 to take it from the shards")


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # cpu=True on a machine without CUDA lets torchrun / accelerate launch run gloo (MULTI_CPU)
        self.accelerator = Accelerator(mixed_precision=_precision(cfg),
                                       cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes

        meta = read_meta(cfg.data_dir)
        if cfg.tokenizer:
            check_tokenizer(cfg.data_dir, cfg.tokenizer)
        resolve_vocab(cfg, meta)
        self.global_batch, self.accum = plan_batch(cfg.batch.global_batch_tokens, cfg.seq_len,
                                                   cfg.batch.micro_batch_size, self.world)
        train_index = SequenceIndex.open(cfg.data_dir, "train", cfg.seq_len)
        self.val_index = (SequenceIndex.open(cfg.data_dir, "val", cfg.seq_len)
                          if cfg.data.val_every > 0 else None)
        self.batches = DistributedBatches(train_index, self.global_batch,
                                          cfg.batch.micro_batch_size, self.rank, self.world,
                                          cfg.run.seed)

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        model = GPT(cfg.model)
        self.raw_model = model
        optimizer = build_optimizer(model, cfg.optim.lr, (cfg.optim.beta1, cfg.optim.beta2),
                                    cfg.optim.eps, cfg.optim.weight_decay, cfg.optim.fused)
        if cfg.run.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim.lr, cfg.optim.warmup_steps,
                                         cfg.run.max_steps, cfg.optim.min_lr_ratio)
        torch.manual_seed(cfg.run.seed + 1000 * (self.rank + 1))  # per-rank dropout streams

        self.step = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)
        device_name = torch.cuda.get_device_name() if acc.device.type == "cuda" else None
        self.peak = cfg.logging.peak_flops or peak_flops(device_name)
        self.stop = StopFlag()

    # --- checkpoints -------------------------------------------------------------------------

    def _state_options(self) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def save(self) -> Path:
        acc = self.accelerator
        model_sd = get_model_state_dict(self.model, options=self._state_options())
        optim_sd = get_optimizer_state_dict(self.model, self.optimizer,
                                            options=self._state_options())
        trainer_state = {
            "step": self.step,
            "data": self.batches.state_dict(),
            "tokens_seen": self.tokens_seen,
            "world_size": self.world,
            "extra": {"global_batch": self.global_batch, "accum": self.accum},
        }
        path = ckpt.save_checkpoint(
            self.ckpt_dir, self.step, model_state=model_sd, optim_state=optim_sd,
            sched_state=self.scheduler.state_dict(), trainer_state=trainer_state,
            config_yaml=yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            rank=self.rank, barrier=acc.wait_for_everyone, keep_last=self.cfg.checkpoint.keep_last)
        self.last_checkpoint = path
        if acc.is_main_process:
            log.info("saved checkpoint %s", path)
        return path

    def find_resume_point(self) -> Path | None:
        resume = self.cfg.run.resume
        if resume == "never":
            return None
        if resume == "auto":
            if self.accelerator.is_main_process:
                ckpt.remove_stale_tmp(self.ckpt_dir)
            self.accelerator.wait_for_everyone()
            return ckpt.find_latest(self.ckpt_dir)
        path = Path(resume)
        ckpt.verify(path)  # an explicitly named checkpoint must be whole: raise, never skip
        return path

    def load(self, folder: Path) -> None:
        state = ckpt.load_trainer_state(folder)
        model_sd = ckpt.load_model_state(folder)
        set_model_state_dict(self.model, model_sd, options=self._state_options())
        optim_sd = ckpt.load_torch(folder, "optimizer.pt")
        set_optimizer_state_dict(self.model, self.optimizer, optim_sd,
                                 options=self._state_options())
        self.scheduler.load_state_dict(ckpt.load_torch(folder, "scheduler.pt"))
        self.step = state.step
        # the lr of the next update comes from the schedule as configured now (run.max_steps
        # may have been raised to extend a finished run), not from the saved optimizer groups
        next_lr = lr_at(self.step + 1, self.cfg.optim.lr, self.cfg.optim.warmup_steps,
                        self.cfg.run.max_steps, self.cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = next_lr
        if state.world_size != self.world:
            log.warning("checkpoint was written by %d process(es), resuming on %d: the data order "
                        "continues exactly, per-rank RNG streams are re-seeded",
                        state.world_size, self.world)
        self.batches.load_state_dict(state.data)
        self.tokens_seen = state.tokens_seen
        rng = ckpt.load_rng(folder, self.rank) if state.world_size == self.world else None
        if rng is not None:
            ckpt.set_rng_state(rng)
        self.last_checkpoint = folder

    # --- steps -------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float]:
        """One optimizer update over the global batch; returns (mean loss, grad norm)."""
        acc, model = self.accelerator, self.model
        model.train()
        micro_batches = self.batches.next_step()
        loss_sum = torch.zeros((), device=acc.device)
        for i, mb in enumerate(micro_batches):
            mb = mb.to(acc.device, non_blocking=True)
            sync = i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                _, loss = model(mb[:, :-1], mb[:, 1:])
                acc.backward(loss / self.accum)
            loss_sum += loss.detach().float()
        loss = acc.reduce(loss_sum / self.accum, reduction="mean").item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(self._nonfinite_message("loss", loss))
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._nonfinite_message("gradient norm", grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def _nonfinite_message(self, what: str, value: float) -> str:
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was written yet")
        return (f"{what} is {value} at step {self.step + 1}; stopping before the update so the "
                f"weights stay finite ({where}). Lower optim.lr, raise optim.warmup_steps or check "
                "the data, then resume.")

    @torch.no_grad()
    def evaluate(self) -> float:
        acc = self.accelerator
        self.model.eval()
        total = torch.zeros(2, device=acc.device, dtype=torch.float64)
        for mb in val_batches(self.val_index, self.cfg.data.val_sequences,
                              self.cfg.batch.micro_batch_size, self.rank, self.world):
            mb = mb.to(acc.device)
            _, loss = self.model(mb[:, :-1], mb[:, 1:])
            total += torch.tensor([loss.double().item() * mb.shape[0], mb.shape[0]],
                                  device=acc.device, dtype=torch.float64)
        total = acc.reduce(total, reduction="sum")
        return float(total[0] / total[1])

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self.stop.signum else 0.0], device=self.accelerator.device)
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        main = acc.is_main_process
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_from = self.find_resume_point()
        if resume_from is not None:
            self.load(resume_from)
            if main:
                log.info("resumed from %s at step %d", resume_from, self.step)
        if main:
            atomic_write_text(self.run_dir / "config.yaml",
                              yaml.safe_dump(to_dict(cfg), sort_keys=False))
            self._write_status("running")
        metrics = MetricsLogger(
            self.run_dir, enabled=main,
            resume_step=self.step if resume_from is not None else None,
            wandb_cfg={"mode": cfg.logging.wandb_mode, "project": cfg.logging.wandb_project}
            if cfg.logging.wandb else None,
            config=to_dict(cfg))
        self.stop.install()
        status, loss = "finished", None
        tokens_per_step = self.global_batch * cfg.seq_len
        progress = _progress(main, self.step, cfg.run.max_steps)
        try:
            while self.step < cfg.run.max_steps:
                if self._stop_requested():
                    status = "preempted"
                    break
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    loss, grad_norm = self.train_step()
                except NonFiniteLossError:
                    if main:
                        self._write_status("failed", reason="non-finite loss")
                    raise
                if acc.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += tokens_per_step
                tps = tokens_per_step / dt
                metrics.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens": self.tokens_seen, "tokens_per_s": tps, "step_time_s": dt,
                             "mfu": mfu(tps, self.flops_per_token, self.world, self.peak),
                             "epoch": self.batches.position.epoch})
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                if self.val_index is not None and self.step % cfg.data.val_every == 0:
                    metrics.log({"step": self.step, "val_loss": self.evaluate()})
                every = cfg.checkpoint.every
                if (every and self.step % every == 0) or self.step == cfg.run.max_steps:
                    self.save()
            if status == "preempted":
                if self.last_checkpoint is None or ckpt.step_dir_name(self.step) != self.last_checkpoint.name:
                    self.save()
                if main:
                    log.warning("received signal %s: saved step %d, exiting with code %d so the "
                                "job can be requeued", self.stop.signum, self.step,
                                PREEMPTED_EXIT_CODE)
            if main:
                self._write_status(status)
        finally:
            progress.close()
            metrics.close()
            self.stop.restore()
        return TrainResult(self.step, status, self.last_checkpoint, loss)

    def _write_status(self, status: str, **extra) -> None:
        atomic_write_json(self.run_dir / "status.json",
                          {"status": status, "step": self.step, **extra,
                           "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None})


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True)


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).fit()
