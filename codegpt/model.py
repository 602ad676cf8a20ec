"""A GPT-3-style decoder: the whole forward pass on one screen.

Token + learned position embeddings, pre-LayerNorm blocks of causal self-attention and a GELU
MLP of 4x width, a final LayerNorm, and an output head tied to the token embedding. Attention
goes through ``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel (flash,
memory-efficient or math) for the device. GPT-3 alternated dense layers with locally banded
sparse ones; ``sparse_attention=True`` does the same, with the band given by ``local_window``.

Inference runs the same modules with a key/value cache (``GPT.forward_cached``); decoding many
samples against shared prompts lives in ``codegpt.eval.decode``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from codegpt.config import setting

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each [B, H, max_len, C/H]


@dataclass
class ModelConfig:
    """Architecture of the decoder. Named sizes live in ``configs/model/*.yaml``."""

    n_layer: int = setting(2, ge=1)
    n_head: int = setting(4, ge=1)
    d_model: int = setting(64, ge=1)
    block_size: int = setting(128, ge=1)
    # 0 means "take it from the token shards' meta.json" when training.
    vocab_size: int = setting(0, ge=0)
    # The embedding matrix is padded to a multiple of this for faster matmuls; padded ids
    # are sliced off the logits, so neither the loss nor sampling ever sees them (1: no padding).
    pad_vocab_multiple: int = setting(64, ge=1)
    dropout: float = setting(0.0, ge=0, lt=1)
    bias: bool = True
    # GPT-3: even layers dense, odd layers attend only to the previous ``local_window`` tokens.
    sparse_attention: bool = False
    local_window: int = setting(128, ge=1)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}"
            )

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return ((self.vocab_size + m - 1) // m) * m

    def is_sparse_layer(self, layer: int) -> bool:
        return self.sparse_attention and layer % 2 == 1


def dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at all when p == 0 (GPT-3 pretraining used none)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def banded_causal_mask(seq_len: int, window: int, device=None, start: int = 0) -> torch.Tensor:
    """Boolean [T - start, T] mask, True where query i (positions start..T-1) may attend key j:
    j <= i and i - j < window. ``start`` > 0 is a cached forward's new queries."""
    i = torch.arange(start, seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j < window)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.window = cfg.local_window if cfg.is_sparse_layer(layer) else None
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.c_proj.residual_scaled = True  # marks the GPT-2 1/sqrt(2L) init
        self.resid_drop = dropout(cfg.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, H, T, C/H] of x [B, T, C], from one fused projection."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                start_pos: int = 0) -> torch.Tensor:
        """x [B, T, C] at positions start_pos... With ``kv`` (k, v caches [B, H, max_len, C/H])
        the new keys/values are written at start_pos and the queries attend to every cached
        position up to their own (within the band of a sparse layer)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        end = start_pos + T
        if kv is not None:
            k_cache, v_cache = kv
            k_cache[:, :, start_pos:end] = k
            v_cache[:, :, start_pos:end] = v
            k, v = k_cache[:, :, :end], v_cache[:, :, :end]
        mask = self.mask(start_pos, end, x.device)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=mask is None and start_pos == 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads back side by side
        return self.resid_drop(self.c_proj(y))

    def mask(self, start: int, end: int, device=None) -> torch.Tensor | None:
        """Which of keys 0..end-1 queries start..end-1 may see, or None where SDPA needs no
        mask (so it may pick a fused kernel): causal from position 0 (``is_causal``), or one
        new query that sees every key, as long as the band of a sparse layer covers them all."""
        if (self.window is None or self.window >= end) and (start == 0 or end - start == 1):
            return None
        return banded_causal_mask(end, self.window or end, device, start=start)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.c_proj.residual_scaled = True
        self.drop = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The tanh approximation is GPT-2/3's GELU; one fused kernel instead of six pointwise ops.
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (the unit FSDP wraps)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building the model")
        self.config = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        # -inf on padded ids, added inside the head's GEMM (addmm) at no cost: the loss over all
        # padded columns equals the loss over the real vocabulary, with no slice-and-copy of the
        # [B, T, V] logits. Not persistent: checkpoints hold only learned weights.
        pad = torch.zeros(cfg.padded_vocab_size)
        pad[cfg.vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", pad, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2/3 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2L)."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = resid_std if getattr(module, "residual_scaled", False) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied head counted once); ``non_embedding`` drops position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: [B, T] token ids. Returns (logits [B, T, vocab_size], loss or None)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.config.block_size}")
        x = self.trunk(idx)  # [B, T, C]
        logits = F.linear(x, self.lm_head.weight, self.vocab_mask)  # [B, T, V padded]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T),
                                   ignore_index=-100)  # targets -100 take no loss (SFT prompts)
        return logits[..., : self.config.vocab_size], loss  # a view without the padded ids

    def trunk(self, idx: torch.Tensor, cache: KVCache | None = None,
              start_pos: int = 0) -> torch.Tensor:
        """Final-LayerNorm activations [B, T, C] of tokens idx [B, T] at positions start_pos..,
        each layer's keys/values also written into ``cache`` when there is one."""
        pos = torch.arange(start_pos, start_pos + idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, C]
        for block, kv in zip(self.blocks, cache or [None] * len(self.blocks)):
            x = block(x, kv, start_pos)
        return self.ln_f(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab_size] of final-LayerNorm activations x [..., C]."""
        return F.linear(x, self.lm_head.weight, self.vocab_mask)[..., : self.config.vocab_size]

    def new_kv_cache(self, batch: int, max_len: int | None = None, device=None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """Empty key/value caches, one (k, v) pair of [B, H, max_len, C/H] per layer."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else min(max_len, cfg.block_size)
        device = self.wte.weight.device if device is None else device
        dtype = self.wte.weight.dtype if dtype is None else dtype
        shape = (batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head)
        return [(torch.empty(shape, device=device, dtype=dtype),
                 torch.empty(shape, device=device, dtype=dtype)) for _ in range(cfg.n_layer)]

    @torch.no_grad()
    def forward_cached(self, idx: torch.Tensor, cache: KVCache, start_pos: int,
                       head_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Inference (eval mode) with a KV cache: idx [B, T] are the tokens at positions
        start_pos.., their keys/values written into ``cache``; returns logits [B, T, vocab_size].
        With ``head_pos`` [B] only row b's position head_pos[b] goes through the output head
        (the last token of a right-padded prompt), and the logits are [B, vocab_size]."""
        B, T = idx.shape
        end = start_pos + T
        if end > cache[0][0].shape[2]:
            raise ValueError(f"position {end} exceeds the KV cache length {cache[0][0].shape[2]} "
                             f"(model.block_size={self.config.block_size})")
        x = self.trunk(idx, cache, start_pos)  # [B, T, C]
        if head_pos is not None:
            x = x[torch.arange(B, device=idx.device), head_pos.to(idx.device)]  # [B, C]
        return self.head(x)
