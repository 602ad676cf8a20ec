"""FLOPs per token and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import platform
from pathlib import Path

from codegpt.model import ModelConfig

# Peak dense bf16 FLOP/s per device (no sparsity), matched on the CUDA device name.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("L40S", 362e12),
    ("4090", 165e12),
    ("V100", 125e12),  # fp16 tensor cores; V100 has no bf16
)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (the platform's word for it elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def n_params(cfg: ModelConfig, include_position: bool = False) -> int:
    """Parameters of the decoder counted analytically (tied head once)."""
    d, L, V = cfg.d_model, cfg.n_layer, cfg.padded_vocab_size
    b = 1 if cfg.bias else 0
    per_layer = (
        2 * (d + b * d)                       # two LayerNorms
        + d * 3 * d + b * 3 * d               # qkv
        + d * d + b * d                       # attention output
        + d * 4 * d + b * 4 * d               # MLP in
        + 4 * d * d + b * d                   # MLP out
    )
    n = V * d + L * per_layer + d + b * d     # embeddings, blocks, final LayerNorm
    return n + (cfg.block_size * d if include_position else 0)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N + 12·L·d·T (N without position embeddings)."""
    T = seq_len or cfg.block_size
    return 6.0 * n_params(cfg) + 12.0 * cfg.n_layer * cfg.d_model * T


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, n_devices: int, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak of all devices; None when the peak is unknown."""
    if not peak or n_devices < 1:
        return None
    return tokens_per_s * flops_per_tok / (peak * n_devices)
