"""nanoGPT's model and optimizer, as its ``model.py`` and ``train.py`` compute them, for
``bench.bench_train_step --against nanogpt``: the reference codegpt's GPT-3 preset is timed
against at the same shape. Written for this benchmark from nanoGPT's published design (it is not
a package to install):

- pre-LayerNorm blocks; LayerNorm with an optional bias (``F.layer_norm``, eps 1e-5);
- attention: one fused q/k/v projection, ``F.scaled_dot_product_attention(is_causal=True)``,
  an output projection;
- MLP: 4x width, the exact (erf) GELU of ``nn.GELU()``;
- learned position embeddings, a head tied to the token embedding, the loss over the full
  logits (``F.cross_entropy``, ignore_index -1);
- AdamW with decay on the parameters of two or more dimensions, fused only on CUDA (nanoGPT's
  ``configure_optimizers``); gradient clipping at 1.0 in the training loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Attention(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool):
        super().__init__()
        self.ln_1 = LayerNorm(d, bias)
        self.attn = Attention(d, n_head, bias)
        self.ln_2 = LayerNorm(d, bias)
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, n_layer: int, n_head: int, d: int,
                 bias: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.h = nn.ModuleList(Block(d, n_head, bias) for _ in range(n_layer))
        self.ln_f = LayerNorm(d, bias)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif p.ndim == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)


def build(cfg, device: torch.device, lr: float = 3e-4):
    """(model, optimizer, loss function) of nanoGPT at the shape of a codegpt ModelConfig."""
    model = NanoGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model,
                    cfg.bias).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), **fused)
    return model, opt, model
