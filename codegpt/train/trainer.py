"""The training loop: a thin composition of model, data, optimizer, schedule, checkpoints and
metrics, run through accelerate so the same code serves one CPU, one GPU, DDP and FSDP.
"""

from __future__ import annotations

import contextlib
import json
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

from codegpt.config import from_dict, to_dict
from codegpt.errors import CodegptError, ConfigError, NonFiniteLossError
from codegpt.io import atomic_write_json, atomic_write_text, overwrite_in_place
from codegpt.model import GPT, ModelConfig
from codegpt.outputs import check_output, is_disk_full, writing_in_place
from codegpt.train import checkpoint as ckpt
from codegpt.train.batches import (DistributedBatches, TrainData, as_tensors, loss_tokens,
                                   open_token_data, plan_batch, val_batches)
from codegpt.train.config import ARCHITECTURE_KEYS, TrainConfig
from codegpt.train.flops import flops_per_token, mfu, peak_flops
from codegpt.train.metrics import MetricsLogger
from codegpt.train.optim import build_optimizer
from codegpt.train.schedule import build_scheduler, lr_at_time

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


def _enable_cpu_fsdp(acc) -> None:
    """Honour an FSDP launch config on CPU processes.

    accelerate (1.15) turns a multi-process CPU launch into MULTI_CPU (DDP over gloo) even when
    the launch config says ``distributed_type: FSDP``: its state switches to FSDP only for GPU
    kinds. torch's ``fully_shard`` works over gloo on CPU, so when the launcher asked for FSDP
    (``ACCELERATE_USE_FSDP``) and accelerate settled on MULTI_CPU, set the state to FSDP with
    the plugin read from the launch environment; ``prepare`` then shards the model exactly as it
    does on GPUs. This is what lets the FSDP path be tested without a GPU."""
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (acc.distributed_type != DistributedType.MULTI_CPU
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"):
        return
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    acc.state.distributed_type = DistributedType.FSDP
    # as accelerate does for FSDP on GPUs; AcceleratorState() re-reads it from here
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def open_data(cfg: TrainConfig) -> TrainData:
    """The examples of ``data.format``: token-shard windows, or Codex-S pairs tokenized now."""
    with_val = cfg.data.val_every > 0
    if cfg.data.format == "sft":
        from codegpt.train.sft import open_sft_data

        return open_sft_data(cfg.data_dir, cfg.tokenizer, cfg.seq_len, with_val)
    return open_token_data(cfg.data_dir, cfg.tokenizer, cfg.seq_len, with_val)


def data_source(cfg: TrainConfig) -> str:
    """Where the data's token ids come from, for messages."""
    if cfg.data.format == "sft":
        return f"the tokenizer {cfg.tokenizer}"
    return f"the token shards in {cfg.data_dir}"


def resolve_vocab(cfg: TrainConfig, data: TrainData) -> None:
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
    theirs = ckpt.checkpoint_tokenizer_hash(folder)
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


ABSENT = "(absent)"  # the value of a key a config lacks, in ``config_changes``


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


RESUME_IGNORED_KEYS = ("run.resume",)  # how a run finds its checkpoint, not what it trains


def check_resume_config(folder: Path, cfg: TrainConfig, warn: bool = True) -> None:
    """A run that resumes from ``folder`` with other settings than the checkpoint's run (its
    config.yaml) says so: one warning listing every changed key with its old and new value
    (``warn``: on the main process); a changed key that shapes the weights (``ARCHITECTURE_KEYS``)
    is a ConfigError naming it (one the checkpoint's config lacks, from an older codegpt, is only
    listed). The same config (a requeue) says nothing."""
    saved = ckpt.checkpoint_config(folder)
    now = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))  # as config.yaml holds it
    changes = {k: v for k, v in config_changes(saved, now).items()
               if k not in RESUME_IGNORED_KEYS}
    for key in ARCHITECTURE_KEYS:
        old, new = changes.get(f"model.{key}", (ABSENT, None))
        if old != ABSENT:
            raise ConfigError(f"model.{key}={new} but the checkpoint {folder} this run resumes "
                              f"from holds a model with {key}={old}: a resumed run keeps its "
                              f"weights' shape; resume with model.{key}={old}, or start a new "
                              "run (another out_dir, or run.resume=never)")
    if changes and warn:
        log.warning("resuming from %s with changed settings: %s", folder,
                    ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))


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
    folder = ckpt.resolve_checkpoint(cfg.init_from)
    start_cfg = ckpt.checkpoint_config(folder)
    check_start_tokenizer(folder, start_cfg, data, cfg)
    resolve_vocab(cfg, data)
    check_start_model(folder, start_cfg["model"], cfg.model)
    return folder


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


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg
        check_output(cfg.out_dir, "train")  # a path it may not write is refused before any work
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # cpu=True on a machine without CUDA lets torchrun / accelerate launch run gloo (MULTI_CPU)
        self.accelerator = Accelerator(mixed_precision=_precision(cfg),
                                       cpu=not torch.cuda.is_available())
        acc = self.accelerator
        _enable_cpu_fsdp(acc)
        self.rank, self.world = acc.process_index, acc.num_processes

        data = open_data(cfg)
        self.tokenizer_hash = data.tokenizer_hash  # recorded in every checkpoint
        self.init_from = resolve_start(cfg, data)
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
        self.raw_model = model
        optimizer = build_optimizer(model, cfg.optim.lr, (cfg.optim.beta1, cfg.optim.beta2),
                                    cfg.optim.eps, cfg.optim.weight_decay, cfg.optim.fused)
        if cfg.run.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if acc.is_main_process:
            log.info("%d process(es), %s%s, device %s", self.world, acc.distributed_type.value,
                     " (FSDP2: parameters sharded with fully_shard)" if acc.is_fsdp2 else "",
                     acc.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim.lr, cfg.optim.warmup_steps,
                                         cfg.run.max_steps, cfg.optim.min_lr_ratio)
        torch.manual_seed(cfg.run.seed + 1000 * (self.rank + 1))  # per-rank dropout streams

        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0  # wall seconds of the loop in earlier processes (resumes)
        self._loop_start: float | None = None  # when this process's loop began
        self.started = False  # whether this run has written to its folder yet
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
            "extra": {"global_batch": self.global_batch, "accum": self.accum,
                      "elapsed_s": self.elapsed()},
        }
        path = ckpt.save_checkpoint(
            self.ckpt_dir, self.step, model_state=model_sd, optim_state=optim_sd,
            sched_state=self.scheduler.state_dict(), trainer_state=trainer_state,
            config_yaml=yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            rank=self.rank, barrier=acc.wait_for_everyone, keep_last=self.cfg.checkpoint.keep_last,
            tokenizer_hash=self.tokenizer_hash)
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
        check_resume_config(folder, self.cfg, warn=self.accelerator.is_main_process)
        state = ckpt.load_trainer_state(folder)
        self.load_weights(folder)
        optim_sd = ckpt.load_torch(folder, "optimizer.pt")
        set_optimizer_state_dict(self.model, self.optimizer, optim_sd,
                                 options=self._state_options())
        self.scheduler.load_state_dict(ckpt.load_torch(folder, "scheduler.pt"))
        self.step = state.step
        # the lr of the next update comes from the schedule as configured now (run.max_steps
        # may have been raised to extend a finished run), not from the saved optimizer groups;
        # computed as LambdaLR does (peak * factor), so it equals the unbroken run's bit for bit
        sched = self.scheduler
        sched.base_lrs = [self.cfg.optim.lr] * len(sched.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, sched.lr_lambdas):
            group["lr"] = self.cfg.optim.lr * factor(sched.last_epoch)
        if state.world_size != self.world:
            log.warning("checkpoint was written by %d process(es), resuming on %d: the data order "
                        "continues exactly, per-rank RNG streams are re-seeded",
                        state.world_size, self.world)
        self.batches.load_state_dict(state.data)
        self.tokens_seen = state.tokens_seen
        self.elapsed_before = float(state.extra.get("elapsed_s", 0.0))
        rng = ckpt.load_rng(folder, self.rank) if state.world_size == self.world else None
        if rng is not None:
            ckpt.set_rng_state(rng)
        self.last_checkpoint = folder

    def load_weights(self, folder: Path) -> None:
        """The model weights of a checkpoint (a resumed run's, or init_from's)."""
        set_model_state_dict(self.model, ckpt.load_model_state(folder),
                             options=self._state_options())

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
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, int(total.item())

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

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self.stop.signum else 0.0], device=self.accelerator.device)
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    # --- the loop ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Wall seconds the loop has run, this process and the ones it resumes."""
        start = self._loop_start
        return self.elapsed_before + (time.perf_counter() - start if start is not None else 0.0)

    def _time_fraction(self) -> float:
        """The share of run.max_minutes spent, the same on every rank (rank 0's clock)."""
        budget = self.cfg.run.max_minutes * 60.0
        if budget <= 0:
            return 0.0
        spent = torch.tensor([self.elapsed() / budget], device=self.accelerator.device)
        if self.world > 1:
            from accelerate.utils import broadcast

            spent = broadcast(spent, from_process=0)
        return float(spent.item())

    def _set_time_lr(self, fraction: float) -> None:
        """Under a time budget the lr of the next update follows the clock as well as the step."""
        o = self.cfg.optim
        lr = lr_at_time(self.step + 1, fraction, o.lr, o.warmup_steps, self.cfg.run.max_steps,
                        o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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

    def _record_failure(self, e: BaseException) -> None:
        """What the status file says after a run failed: the reason and the last checkpoint
        that was saved whole (an interrupted save's temporary folder is removed first, which
        also frees the space a full disk needs for the status file)."""
        reason = ("non-finite loss" if isinstance(e, NonFiniteLossError)
                  else "interrupted" if isinstance(e, KeyboardInterrupt)
                  else "disk full" if is_disk_full(e, self.run_dir)
                  else f"{type(e).__name__}: {e}"[:300])
        ckpt.remove_stale_tmp(self.ckpt_dir)
        with contextlib.suppress(Exception):
            self._write_status("failed", reason=reason)

    def _finished_files(self) -> list[Path]:
        """What the marker of a finished run lists: the files the next stage reads."""
        files = [self.run_dir / n for n in ("config.yaml", "status.json", "metrics.jsonl")]
        if self.last_checkpoint is not None:
            files.append(self.last_checkpoint / ckpt.MANIFEST)
        return [f.resolve() for f in files if f.is_file()]

    def fit(self) -> TrainResult:
        """Train to max_steps, the time budget or a stop signal, in a run folder that this run
        alone writes to; its marker says complete once the run finished."""
        with self._claim() as place:
            try:
                result = self._fit()
            except BaseException as e:
                if self.accelerator.is_main_process and self.started:
                    self._record_failure(e)  # a run refused before it wrote changes nothing
                raise
            if place is not None and result.status == "finished":
                place.complete(self._finished_files())
        return result

    def _fit(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        main = acc.is_main_process
        resume_from = self.find_resume_point()
        if resume_from is not None:  # a run's own checkpoint wins over init_from
            self.load(resume_from)
            if main:
                log.info("resumed from %s at step %d", resume_from, self.step)
        elif self.init_from is not None:
            self.load_weights(self.init_from)
            if main:
                log.info("starting from the weights of %s", self.init_from)
        self.started = True  # from here on the run writes to its folder
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
        status, loss, reason = "finished", None, None
        tokens_per_step = self.global_batch * cfg.seq_len
        progress = _progress(main, self.step, cfg.run.max_steps, cfg.run.max_minutes * 60,
                             self.elapsed_before)
        self._loop_start = time.perf_counter()
        timed = cfg.run.max_minutes > 0
        spent = f"run.max_minutes={cfg.run.max_minutes:g} spent"
        # The clock is read once before the loop (a resumed run whose checkpoint has spent the
        # budget does nothing) and once after each update, before its checkpoint, so the
        # checkpoint of the last update records a spent budget; the lr of the next update
        # follows that same reading.
        fraction = self._time_fraction() if timed else 0.0
        out_of_time = fraction >= 1.0
        if out_of_time:
            reason = spent
        try:
            while self.step < cfg.run.max_steps and not out_of_time:
                if self._stop_requested():
                    status = "preempted"
                    break
                if timed:
                    self._set_time_lr(fraction)
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm, n_loss = self.train_step()
                if acc.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += tokens_per_step
                tps = tokens_per_step / dt
                metrics.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens": self.tokens_seen, "loss_tokens": n_loss,
                             "tokens_per_s": tps, "step_time_s": dt,
                             "elapsed_s": round(self.elapsed(), 3),
                             "mfu": mfu(tps, self.flops_per_token, self.world, self.peak),
                             "epoch": self.batches.position.epoch})
                if timed:  # the bar counts the budget's seconds
                    progress.n = min(progress.total, int(self.elapsed()))
                    progress.set_postfix(step=self.step, loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                else:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                if self.val_data is not None and self.step % cfg.data.val_every == 0:
                    metrics.log({"step": self.step, "val_loss": self.evaluate()})
                fraction = self._time_fraction() if timed else 0.0
                out_of_time = fraction >= 1.0
                if out_of_time:
                    reason = spent
                every = cfg.checkpoint.every
                if ((every and self.step % every == 0) or self.step == cfg.run.max_steps
                        or out_of_time):
                    self.save()
                    if main:  # the status file names the newest whole checkpoint at all times
                        self._write_status("running")
            if status == "preempted":
                if self.last_checkpoint is None or ckpt.step_dir_name(self.step) != self.last_checkpoint.name:
                    self.save()
                if main:
                    log.warning("received signal %s: saved step %d, exiting with code %d so the "
                                "job can be requeued", self.stop.signum, self.step,
                                PREEMPTED_EXIT_CODE)
            if reason is not None and main:  # its last update's checkpoint is saved above
                log.info("%s: finished at step %d of %d", reason, self.step, cfg.run.max_steps)
            if main:
                self._write_status(status, **({"reason": reason} if reason else {}))
        finally:
            progress.close()
            metrics.close()
            self.stop.restore()
        return TrainResult(self.step, status, self.last_checkpoint, loss)

    def _write_status(self, status: str, **extra) -> None:
        record = {"status": status, "step": self.step, **extra,
                  "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None}
        try:
            atomic_write_json(self.run_dir / "status.json", record)
        except OSError as e:
            if not is_disk_full(e):
                raise
            # no room for a second copy: write over the old one, whose blocks are there
            overwrite_in_place(self.run_dir / "status.json", json.dumps(record) + "\n")


def _progress(enabled: bool, start: int, total: int, budget_s: float = 0.0,
              spent_s: float = 0.0):
    """Steps of max_steps; under a time budget, seconds of the budget (the clock ends the run).
    Shown on a terminal only: in a log file metrics.jsonl and the checkpoint lines tell it."""
    from tqdm import tqdm

    if budget_s > 0:
        return tqdm(total=int(budget_s), initial=min(int(budget_s), int(spent_s)),
                    disable=None if enabled else True, desc="train", unit="s", dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of the budget{postfix}")
    return tqdm(total=total, initial=start, disable=None if enabled else True, desc="train",
                unit="step",
                dynamic_ncols=True)


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).fit()
