"""The accelerate setup of a training run: one CPU, one GPU, DDP or FSDP from one code path.

The launcher (``accelerate launch``, ``torchrun``, Slurm's ``srun``) decides how many processes
there are and whether the model is sharded; ``build_accelerator`` only adds the run's precision
and makes an FSDP launch on CPU processes shard as it does on GPUs.
"""

from __future__ import annotations

import os

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


def build_accelerator(run: RunSection) -> Accelerator:
    """The accelerator of this process, in the run's precision."""
    # cpu=True on a machine without CUDA lets torchrun / accelerate launch run gloo (MULTI_CPU)
    acc = Accelerator(mixed_precision=precision(run), cpu=not torch.cuda.is_available())
    enable_cpu_fsdp(acc)
    return acc
