"""AdamW with GPT-3's settings and weight decay on weight matrices only."""

from __future__ import annotations

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of Linear layers; never biases, LayerNorms or embeddings.

    The output head is tied to the token embedding, so it counts as an embedding (no decay).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight) for m in model.modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in embeddings
    }
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             **kwargs)
