"""A GPT-3-style decoder, and the options of the models that followed it: the forward pass on
two screens.

By default it is GPT-3's: token + learned position embeddings, pre-LayerNorm blocks of causal
self-attention and a GELU MLP of 4x width, a final LayerNorm, and an output head tied to the
token embedding. Attention goes through ``F.scaled_dot_product_attention`` so PyTorch picks the
fastest kernel (flash, memory-efficient or math) for the device. GPT-3 alternated dense layers
with locally banded sparse ones; ``sparse_attention=True`` does the same, with the band given
by ``local_window``.

The later options each pick a module, so the forward is the same for all of them: rotary
positions (``positions``), RMSNorm (``norm``), SwiGLU or squared-ReLU MLPs (``mlp``), QK-norm,
no biases, an untied head, zero-initialised residual projections and a logit soft-cap.

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
    # After GPT-3 (the defaults are GPT-3's). learned: a position embedding added to the
    # tokens'; rotary: queries and keys rotated by their position (RoPE, base rope_theta).
    positions: str = setting("learned", choices=("learned", "rotary"))
    rope_theta: float = setting(10000.0, gt=0)
    norm: str = setting("layernorm", choices=("layernorm", "rmsnorm"))
    norm_eps: float = setting(1e-5, gt=0)
    # gelu: GPT-3's; swiglu: silu(x W) * (x V), Llama's; relu2: relu(x W)^2, modded-nanogpt's
    mlp: str = setting("gelu", choices=("gelu", "swiglu", "relu2"))
    # the MLP's hidden width; 0: 4 d_model, or for swiglu 8/3 d_model rounded up to a multiple
    # of 64 (about the same parameters as 4 d_model without a gate)
    mlp_hidden: int = setting(0, ge=0)
    qk_norm: bool = False          # RMSNorm of each head's queries and keys (before rotary)
    tie_embeddings: bool = True    # the output head is the token embedding
    zero_init_proj: bool = False   # residual projections start at zero (each block starts as
                                   # the identity) instead of GPT-2's N(0, 0.02/sqrt(2L))
    logit_softcap: float = setting(0.0, ge=0)  # logits = c tanh(logits / c); 0: none

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}"
            )
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"model.positions=rotary needs an even head size; d_model/n_head = "
                             f"{self.d_model}/{self.n_head} = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """The MLP's hidden width (the gate's and the up projection's each, for swiglu)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return ((self.vocab_size + m - 1) // m) * m

    def is_sparse_layer(self, layer: int) -> bool:
        return self.sparse_attention and layer % 2 == 1


def dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at all when p == 0 (GPT-3 pretraining used none)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, in float32 and cast back to
    x's dtype, as Llama's ``transformers`` code computes it. On CPU this is about twice as fast
    as ``torch.rms_norm``, whose kernel falls back to a slow path under bf16 autocast."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
                * self.weight).type_as(x)


def norm(cfg: ModelConfig) -> nn.Module:
    """The model's normalisation over the d_model features."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class LearnedPositions(nn.Embedding):
    """GPT-3's positions: a learned vector per position, added to the token embedding."""

    def add(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self(pos)

    def rotation(self, pos: torch.Tensor) -> None:
        return None


class RotaryPositions(nn.Module):
    """Rotary positions (RoPE, Su et al. 2021), in the rotate-half layout of Llama's
    ``transformers`` code: feature i of a head is paired with feature i + head_dim/2, and the
    pair is rotated by pos * theta^(-2i/head_dim). No parameters; the cos/sin tables of every
    position are computed once in float32 (not saved in checkpoints)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.head_dim
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
        angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # [T, d/2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def add(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotation(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [B or 1, 1, T, head_dim/2] of positions pos [T] or [B, T]."""
        pos = pos.view(-1, pos.shape[-1])
        return self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)


Rotation = tuple[torch.Tensor, torch.Tensor] | None


def rotate(x: torch.Tensor, rot: Rotation) -> torch.Tensor:
    """Queries or keys x [B, H, T, head_dim] rotated by ``rot`` (RotaryPositions.rotation);
    unchanged with learned positions (None)."""
    if rot is None:
        return x
    cos, sin = rot
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


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
        qk = (lambda: RMSNorm(cfg.head_dim, cfg.norm_eps)) if cfg.qk_norm else nn.Identity
        self.q_norm, self.k_norm = qk(), qk()
        self.resid_drop = dropout(cfg.dropout)

    def qkv(self, x: torch.Tensor, rot: Rotation = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, H, T, C/H] of x [B, T, C], from one fused projection;
        queries and keys normalised (QK-norm) and rotated (rotary positions) where the model
        does that."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        return rotate(self.q_norm(q), rot), rotate(self.k_norm(k), rot), v

    def forward(self, x: torch.Tensor, rot: Rotation = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                start_pos: int = 0) -> torch.Tensor:
        """x [B, T, C] at positions start_pos.. (rotated by ``rot``, see ``qkv``). With ``kv``
        (k, v caches [B, H, max_len, C/H]) the new keys/values are written at start_pos and the
        queries attend to every cached position up to their own (within the band of a sparse
        layer)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x, rot)
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


def gelu(h: torch.Tensor) -> torch.Tensor:
    # The tanh approximation is GPT-2/3's GELU; one fused kernel instead of six pointwise ops.
    return F.gelu(h, approximate="tanh")


def relu2(h: torch.Tensor) -> torch.Tensor:
    return F.relu(h).square()


def swiglu(h: torch.Tensor) -> torch.Tensor:
    gate, up = h.chunk(2, dim=-1)  # c_fc holds the gate's rows, then the up projection's
    return F.silu(gate) * up


ACTIVATIONS = {"gelu": gelu, "relu2": relu2, "swiglu": swiglu}


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = cfg.ffn_hidden * (2 if cfg.mlp == "swiglu" else 1)
        self.c_fc = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.mlp]
        self.c_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)
        self.c_proj.residual_scaled = True
        self.drop = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block (the unit FSDP wraps)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rot: Rotation = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rot, kv, start_pos)
        return x + self.mlp(self.ln_2(x))


class NoCap(nn.Module):
    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return logits


class SoftCap(nn.Module):
    """The logit soft-cap of Gemma 2 and modded-nanogpt: c tanh(logits / c), in float32; the
    padded ids (``mask``: -inf) stay at -inf."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(logits.float() / self.cap) + mask


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building the model")
        self.config = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.wpe = (LearnedPositions(cfg.block_size, cfg.d_model) if cfg.positions == "learned"
                    else RotaryPositions(cfg))
        self.drop = dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying
        self.softcap = SoftCap(cfg.logit_softcap) if cfg.logit_softcap else NoCap()
        # -inf on padded ids, added inside the head's GEMM (addmm) at no cost: the loss over all
        # padded columns equals the loss over the real vocabulary, with no slice-and-copy of the
        # [B, T, V] logits. Not persistent: checkpoints hold only learned weights.
        pad = torch.zeros(cfg.padded_vocab_size)
        pad[cfg.vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", pad, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2/3 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2L)
        (zero with model.zero_init_proj); norms' gains one, biases zero."""
        cfg = self.config
        resid_std = 0.0 if cfg.zero_init_proj else 0.02 / math.sqrt(2 * cfg.n_layer)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = resid_std if getattr(module, "residual_scaled", False) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied head counted once); ``non_embedding`` drops position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - sum(p.numel() for p in self.wpe.parameters()) if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: [B, T] token ids. Returns (logits [B, T, vocab_size], loss or None)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.config.block_size}")
        x = self.trunk(idx)  # [B, T, C]
        logits = self.padded_logits(x)  # [B, T, V padded]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T),
                                   ignore_index=-100)  # targets -100 take no loss (SFT prompts)
        return logits[..., : self.config.vocab_size], loss  # a view without the padded ids

    def trunk(self, idx: torch.Tensor, cache: KVCache | None = None,
              start_pos: int = 0) -> torch.Tensor:
        """Final-norm activations [B, T, C] of tokens idx [B, T] at positions start_pos..,
        each layer's keys/values also written into ``cache`` when there is one."""
        pos = torch.arange(start_pos, start_pos + idx.shape[1], device=idx.device)
        x = self.drop(self.wpe.add(self.wte(idx), pos))  # [B, T, C]
        rot = self.wpe.rotation(pos)
        for block, kv in zip(self.blocks, cache or [None] * len(self.blocks)):
            x = block(x, rot, kv, start_pos)
        return self.ln_f(x)

    def padded_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., padded vocab] of final-norm activations x [..., C], -inf on the padded
        ids."""
        return self.softcap(F.linear(x, self.lm_head.weight, self.vocab_mask), self.vocab_mask)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab_size] of final-norm activations x [..., C]."""
        return self.padded_logits(x)[..., : self.config.vocab_size]

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
