"""The accelerate setup of a training run: one CPU, one GPU, DDP or FSDP from one code path.

The launcher (``accelerate launch``, ``torchrun``, Slurm's ``srun``) decides how many processes
there are and whether the model is sharded; ``build_accelerator`` only adds the run's precision
and makes an FSDP launch on CPU processes shard as it does on GPUs.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from codegpt.train.config import RunSection


def precision(run: RunSection) -> str:
    """accelerate's mixed precision for ``run.precision``: auto is bf16 on GPU, fp32 on CPU."""
    if run.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return {"fp32": "no", "bf16": "bf16"}[run.precision]


def enable_cpu_fsdp(acc: Accelerator) -> None:
    """Honour an FSDP launch config on CPU processes.

    accelerate (1.15) turns a multi-process CPU launch into MULTI_CPU (DDP over gloo) even when
    the launch config says ``distributed_type: FSDP``: its state switches to FSDP only for GPU
    kinds. torch's ``fully_shard`` works over gloo on CPU, so when the launcher asked for FSDP
    (``ACCELERATE_USE_FSDP``) and accelerate settled on MULTI_CPU, set the state to FSDP with
    the plugin read from the launch environment; ``prepare`` then shards the model exactly as it
    does on GPUs. This is what lets the FSDP path be tested without a GPU. It sets accelerate's
    private shared state, so an accelerate upgrade must keep tests/test_fsdp.py passing."""
    if (acc.distributed_type != DistributedType.MULTI_CPU
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"):
        return
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    acc.state.distributed_type = DistributedType.FSDP
    # as accelerate does for FSDP on GPUs; AcceleratorState() re-reads it from here
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit machines


def keep_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: blocks up to 32 MiB come from its heap
    instead of their own mmap, and the heap's free top is not trimmed back to the OS. By
    default glibc unmaps large freed blocks, so every training step's activations and
    gradients land in fresh pages that the kernel must fault in and zero (millions of faults a
    minute for a small model on CPU). The price is a resident size that stays at its peak,
    which a training process reaches every step anyway. Returns whether it applied: False
    off glibc (macOS, musl), where nothing changes."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # (mallopt's value is a C int: the trim threshold's largest is 2 GiB of free heap top)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def end_process_group() -> None:
    """Destroy the process group of a multi-process launch, if this process has one.

    A process that exits with its gloo process group alive can abort after its work is done:
    gloo's worker threads may still hold finished work (and its tensors) when the interpreter
    shuts down, and freeing them then kills the process with SIGABRT ("terminate called without
    an active exception"), sometimes, more often on a loaded machine. torch and accelerate
    leave the destroying to the program (``destroy_process_group``, ``end_training``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def build_accelerator(run: RunSection) -> Accelerator:
    """The accelerator of this process, in the run's precision."""
    # cpu=True on a machine without CUDA lets torchrun / accelerate launch run gloo (MULTI_CPU)
    acc = Accelerator(mixed_precision=precision(run), cpu=not torch.cuda.is_available())
    enable_cpu_fsdp(acc)
    return acc
