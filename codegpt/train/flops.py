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
    """Parameters of the decoder counted analytically (a tied head once)."""
    d, L, V, h = cfg.d_model, cfg.n_layer, cfg.padded_vocab_size, cfg.ffn_hidden
    b = 1 if cfg.bias else 0
    norm = d + (b * d if cfg.norm == "layernorm" else 0)     # gain (and LayerNorm's bias)
    gates = 2 if cfg.mlp == "swiglu" else 1
    per_layer = (
        2 * norm                              # two norms
        + d * 3 * d + b * 3 * d               # qkv
        + (2 * cfg.head_dim if cfg.qk_norm else 0)
        + d * d + b * d                       # attention output
        + gates * (d * h + b * h)             # MLP in (gate and up for swiglu)
        + h * d + b * d                       # MLP out
    )
    head = 0 if cfg.tie_embeddings else V * d
    n = V * d + L * per_layer + norm + head   # embeddings, blocks, final norm, untied head
    learned = cfg.positions == "learned"
    return n + (cfg.block_size * d if include_position and learned else 0)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N + 12·L·d·T (N without position embeddings; an untied
    head's input embedding is a lookup, not a matmul, so it counts once like a tied one)."""
    T = seq_len or cfg.block_size
    n = n_params(cfg) - (0 if cfg.tie_embeddings else cfg.padded_vocab_size * cfg.d_model)
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.d_model * T


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
