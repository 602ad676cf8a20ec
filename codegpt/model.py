"""A GPT-3-style decoder: the whole forward pass on one screen.

Token + learned position embeddings, pre-LayerNorm blocks of causal self-attention and a GELU
MLP of 4x width, a final LayerNorm, and an output head tied to the token embedding. Attention
goes through ``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel (flash,
memory-efficient or math) for the device. GPT-3 alternated dense layers with locally banded
sparse ones; ``sparse_attention=True`` does the same, with the band given by ``local_window``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """Architecture of the decoder. Named sizes live in ``configs/model/*.yaml``."""

    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    block_size: int = 128
    # 0 means "take it from the token shards' meta.json" when training.
    vocab_size: int = 0
    # The embedding matrix is padded to a multiple of this for faster matmuls; padded ids
    # are sliced off the logits, so neither the loss nor sampling ever sees them.
    pad_vocab_multiple: int = 64
    dropout: float = 0.0
    bias: bool = True
    # GPT-3: even layers dense, odd layers attend only to the previous ``local_window`` tokens.
    sparse_attention: bool = False
    local_window: int = 128

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}"
            )
        if self.sparse_attention and self.local_window < 1:
            raise ValueError(f"model.local_window must be >= 1, got {self.local_window}")

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return ((self.vocab_size + m - 1) // m) * m

    def is_sparse_layer(self, layer: int) -> bool:
        return self.sparse_attention and layer % 2 == 1


def dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at all when p == 0 (GPT-3 pretraining used none)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def banded_causal_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """Boolean [T, T] mask, True where query i may attend key j: j <= i and i - j < window."""
    i = torch.arange(seq_len, device=device)[:, None]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, H, T, C/H]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if self.window is None or self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            mask = banded_causal_mask(T, self.window, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))

    def forward_cached(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       start_pos: int) -> torch.Tensor:
        """Inference: x [B, T, C] at positions start_pos.., keys/values written into the caches
        [B, H, max_len, C/H]; attends to every cached position up to its own."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        end = start_pos + T
        k_cache[:, :, start_pos:end] = k
        v_cache[:, :, start_pos:end] = v
        k, v = k_cache[:, :, :end], v_cache[:, :, :end]
        if start_pos == 0 and (self.window is None or self.window >= T):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1 and (self.window is None or self.window >= end):
            y = F.scaled_dot_product_attention(q, k, v)  # one new query sees all of the past
        else:
            i = torch.arange(start_pos, end, device=x.device)[:, None]
            j = torch.arange(end, device=x.device)[None, :]
            mask = j <= i
            if self.window is not None:
                mask = mask & (i - j < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

    def decode_with_prefix(self, x: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                           groups: list[tuple[int, int, int]] | None, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, step: int, prefix_ok: torch.Tensor | None,
                           own_ok: torch.Tensor | None) -> torch.Tensor:
        """One decoding step of rows continuing prompts. x [B, 1, C] is each row's newest token;
        prefix_k/v [P, H, T0, C/H] hold the P prompts' keys/values (right-padded to T0);
        ``groups`` (p, a, b) says rows a:b continue prompt p, or None when row r continues
        prompt r; k/v_cache [B, H, S, C/H] hold each row's own generated keys/values, written
        at ``step``. ``prefix_ok`` [B, T0] / ``own_ok`` [step + 1] say which prompt / own keys
        a row may see (padding and the band of a sparse layer), None for all. A prompt shared
        by several rows has its keys read once per group with one GEMM, not once per row."""
        B, _, C = x.shape
        H, d = self.n_head, C // self.n_head
        T0 = prefix_k.shape[2]
        q, k, v = self.c_attn(x).view(B, 3, H, d).unbind(1)  # each [B, H, d]
        k_cache[:, :, step] = k
        v_cache[:, :, step] = v
        ks, vs = k_cache[:, :, : step + 1], v_cache[:, :, : step + 1]
        q = q * (1.0 / math.sqrt(d))
        if groups is None:
            s_pre = torch.matmul(q.unsqueeze(2), prefix_k.transpose(2, 3)).squeeze(2)  # [B, H, T0]
        else:
            qh = q.transpose(0, 1)  # [H, B, d]
            pre = [torch.matmul(qh[:, a:b], prefix_k[p].transpose(1, 2)) for p, a, b in groups]
            s_pre = (pre[0] if len(pre) == 1 else torch.cat(pre, 1)).transpose(0, 1)
        s_own = torch.matmul(q.unsqueeze(2), ks.transpose(2, 3)).squeeze(2)   # [B, H, step+1]
        scores = torch.cat([s_pre, s_own], -1).float()
        if prefix_ok is not None:
            scores[..., :T0].masked_fill_(~prefix_ok[:, None, :], float("-inf"))
        if own_ok is not None:
            scores[..., T0:].masked_fill_(~own_ok, float("-inf"))
        probs = torch.softmax(scores, -1).to(q.dtype)
        if groups is None:
            y = torch.matmul(probs[..., :T0].unsqueeze(2), prefix_v).squeeze(2)  # [B, H, d]
        else:
            p_pre = probs[..., :T0].transpose(0, 1)  # [H, B, T0]
            out = [torch.matmul(p_pre[:, a:b], prefix_v[p]) for p, a, b in groups]
            y = (out[0] if len(out) == 1 else torch.cat(out, 1)).transpose(0, 1)
        y = y + torch.matmul(probs[..., T0:].unsqueeze(2), vs).squeeze(2)
        return self.c_proj(y.reshape(B, 1, C))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       start_pos: int) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), k_cache, v_cache, start_pos)
        return x + self.mlp(self.ln_2(x))

    def decode_with_prefix(self, x, prefix_k, prefix_v, groups, k_cache, v_cache, step,
                           prefix_ok, own_ok):
        x = x + self.attn.decode_with_prefix(self.ln_1(x), prefix_k, prefix_v, groups, k_cache,
                                             v_cache, step, prefix_ok, own_ok)
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
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, C]
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.lm_head.weight, self.vocab_mask)  # [B, T, V padded]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T))
        return logits[..., : self.config.vocab_size], loss  # a view without the padded ids

    def new_kv_cache(self, batch: int, max_len: int | None = None, device=None,
                     dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Empty key/value caches, one (k, v) pair of [B, H, max_len, C/H] per layer."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else min(max_len, cfg.block_size)
        device = self.wte.weight.device if device is None else device
        dtype = self.wte.weight.dtype if dtype is None else dtype
        shape = (batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head)
        return [(torch.empty(shape, device=device, dtype=dtype),
                 torch.empty(shape, device=device, dtype=dtype)) for _ in range(cfg.n_layer)]

    def _cached_hidden(self, idx: torch.Tensor, cache: list, start_pos: int) -> torch.Tensor:
        B, T = idx.shape
        end = start_pos + T
        if end > cache[0][0].shape[2]:
            raise ValueError(f"position {end} exceeds the KV cache length {cache[0][0].shape[2]} "
                             f"(model.block_size={self.config.block_size})")
        pos = torch.arange(start_pos, end, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block, (k_cache, v_cache) in zip(self.blocks, cache):
            x = block.forward_cached(x, k_cache, v_cache, start_pos)
        return self.ln_f(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.lm_head.weight, self.vocab_mask)[..., : self.config.vocab_size]

    @torch.no_grad()
    def forward_cached(self, idx: torch.Tensor, cache: list, start_pos: int) -> torch.Tensor:
        """Inference with a KV cache: idx [B, T] are the tokens at positions start_pos..;
        returns logits [B, T, vocab_size]. The training ``forward`` is untouched by this path."""
        return self._logits(self._cached_hidden(idx, cache, start_pos))

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor, cache: list) -> torch.Tensor:
        """Run prompts right-padded into idx [P, T0] (prompt p is idx[p, :lengths[p]]) into
        ``cache``; returns the logits [P, vocab_size] after each prompt's last token. Padding
        sits after the real tokens, so causal attention keeps it out of them; decoding masks it
        with ``prefix_len``. Only the P last positions go through the output head."""
        x = self._cached_hidden(idx, cache, 0)
        last = x[torch.arange(idx.shape[0], device=idx.device), lengths.to(idx.device) - 1]
        return self._logits(last)

    @torch.no_grad()
    def decode_with_prefix(self, tokens: torch.Tensor, prefix: list, groups: list | None,
                           cache: list, step: int, prefix_len: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """One decoding step of rows continuing prompts: ``tokens`` [B], row r's at position
        prefix_len[r] + step (T0 + step when ``prefix_len`` is None). ``prefix`` is the per-layer
        (k, v) [P, H, T0, C/H] of the P prompts (from ``prefill``), ``groups`` the (prompt,
        first row, end row) ranges, or None when row r continues prompt r, ``cache`` the rows'
        own per-layer (k, v) [B, H, S, C/H]. Returns logits [B, vocab_size]: the same as the
        full forward of each row's prompt and tokens, with a prompt shared by several rows kept
        and read once for all of them."""
        T0 = prefix[0][0].shape[2]
        dev = tokens.device
        if step >= cache[0][0].shape[2]:
            raise ValueError(f"step {step} exceeds the KV cache length {cache[0][0].shape[2]}")
        if prefix_len is None:
            prefix_len = torch.full((tokens.shape[0],), T0, device=dev)
        prefix_len = prefix_len.to(dev)
        pos = prefix_len + step  # [B]
        last = int(pos.max())
        if last >= self.config.block_size:
            raise ValueError(f"position {last} exceeds the KV cache "
                             f"(model.block_size={self.config.block_size})")
        j = torch.arange(T0, device=dev)
        padded = j[None, :] < prefix_len[:, None]  # [B, T0]
        dense = (None if bool(padded.all()) else padded, None)
        banded = dense  # sparse layers (all of one window): keys within the window of pos
        w = self.config.local_window
        if self.config.sparse_attention and w < last + 1:
            banded = (padded & (pos[:, None] - j[None, :] < w),
                      step - torch.arange(step + 1, device=dev) < w)
        x = (self.wte(tokens) + self.wpe(pos)).unsqueeze(1)  # [B, 1, C]
        for block, (pk, pv), (k_cache, v_cache) in zip(self.blocks, prefix, cache):
            prefix_ok, own_ok = dense if block.attn.window is None else banded
            x = block.decode_with_prefix(x, pk, pv, groups, k_cache, v_cache, step,
                                         prefix_ok, own_ok)
        return self._logits(self.ln_f(x[:, 0]))
