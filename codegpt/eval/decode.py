"""Decoding many rows against a few shared prompts: the n samples of a prompt read one copy of
its keys/values, and prompts of different lengths share a batch.

The prompts are run once, right-padded to the longest (``prefill``); each decoding step
(``decode_step``) then feeds every row's newest token through the model's own weights and
attends to two sets of keys: its prompt's (read once per group of rows with one GEMM, padding
and the band of a sparse layer masked out) and its own generated ones. Every row gets the logits
the full forward of its prompt + tokens would give it.
"""

from __future__ import annotations

import math

import torch

from codegpt.model import GPT, CausalSelfAttention, KVCache, ModelConfig, Rotation

# (prompt p, first row a, end row b): rows a:b continue prompt p
Groups = list[tuple[int, int, int]]


def prompt_groups(prompts: list[int]) -> Groups:
    """Runs of equal entries: (value, first index, end index), for rows sorted by prompt."""
    out: Groups = []
    for j, p in enumerate(prompts):
        if out and out[-1][0] == p:
            out[-1] = (p, out[-1][1], j + 1)
        else:
            out.append((p, j, j + 1))
    return out


@torch.no_grad()
def prefill(model: GPT, idx: torch.Tensor, lengths: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run prompts right-padded into idx [P, T0] (prompt p is idx[p, :lengths[p]]) into
    ``cache``; returns the logits [P, vocab_size] after each prompt's last token. Padding sits
    after the real tokens, so causal attention keeps it out of them; ``decode_step`` masks it
    with ``prefix_len``. Only the P last positions go through the output head."""
    return model.forward_cached(idx, cache, 0, head_pos=lengths.to(idx.device) - 1)


def attend(attn: CausalSelfAttention, x: torch.Tensor, rot: Rotation, prefix_k: torch.Tensor,
           prefix_v: torch.Tensor, groups: Groups | None, k_cache: torch.Tensor,
           v_cache: torch.Tensor, step: int, prefix_ok: torch.Tensor | None,
           own_ok: torch.Tensor | None) -> torch.Tensor:
    """One decoding step of ``attn`` for rows continuing prompts. x [B, 1, C] is each row's
    newest token (``rot``: the rotation of its position, see ``CausalSelfAttention.qkv``);
    prefix_k/v [P, H, T0, C/H] hold the P prompts' keys/values (right-padded to
    T0); ``groups`` says which rows continue which prompt, or None when row r continues prompt
    r; k/v_cache [B, H, S, C/H] hold each row's own generated keys/values, written at ``step``.
    ``prefix_ok`` [B, T0] / ``own_ok`` [step + 1] say which prompt / own keys a row may see
    (padding and the band of a sparse layer), None for all."""
    B, _, C = x.shape
    d = C // attn.n_head
    T0 = prefix_k.shape[2]
    q, k, v = (t.squeeze(2) for t in attn.qkv(x, rot))  # each [B, H, d]
    k_cache[:, :, step] = k
    v_cache[:, :, step] = v
    ks, vs = k_cache[:, :, : step + 1], v_cache[:, :, : step + 1]
    q = q * (1.0 / math.sqrt(d))
    if groups is None:
        s_pre = torch.matmul(q.unsqueeze(2), prefix_k.transpose(2, 3)).squeeze(2)  # [B, H, T0]
    else:  # one GEMM per prompt for all of its rows: [H, rows, d] x [H, d, T0]
        qh = q.transpose(0, 1)  # [H, B, d]
        pre = [torch.matmul(qh[:, a:b], prefix_k[p].transpose(1, 2)) for p, a, b in groups]
        s_pre = (pre[0] if len(pre) == 1 else torch.cat(pre, 1)).transpose(0, 1)
    s_own = torch.matmul(q.unsqueeze(2), ks.transpose(2, 3)).squeeze(2)   # [B, H, step+1]
    scores = torch.cat([s_pre, s_own], -1).float()  # softmax in float32 whatever the weights
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
    return attn.c_proj(y.reshape(B, 1, C))


def visible_keys(cfg: ModelConfig, prefix_len: torch.Tensor, T0: int, step: int, last: int
                 ) -> tuple[tuple, tuple]:
    """(prefix_ok, own_ok) for the dense layers and for the sparse ones (see ``attend``): a
    row sees its prompt's real tokens (not the padding) and, in a sparse layer, only the keys
    within the window of its position (the newest of which is ``last``). None stands for
    "all", so that no mask is applied."""
    dev = prefix_len.device
    pos = prefix_len + step  # [B]
    j = torch.arange(T0, device=dev)
    padded = j[None, :] < prefix_len[:, None]  # [B, T0]
    dense = (None if bool(padded.all()) else padded, None)
    banded = dense  # sparse layers (all of one window): keys within the window of pos
    w = cfg.local_window
    if cfg.sparse_attention and w < last + 1:
        banded = (padded & (pos[:, None] - j[None, :] < w),
                  step - torch.arange(step + 1, device=dev) < w)
    return dense, banded


@torch.no_grad()
def decode_step(model: GPT, tokens: torch.Tensor, prefix: KVCache, groups: Groups | None,
                cache: KVCache, step: int, prefix_len: torch.Tensor | None = None
                ) -> torch.Tensor:
    """One decoding step of rows continuing prompts: ``tokens`` [B], row r's at position
    prefix_len[r] + step (T0 + step when ``prefix_len`` is None). ``prefix`` is the per-layer
    (k, v) [P, H, T0, C/H] of the P prompts (from ``prefill``), ``groups`` the (prompt, first
    row, end row) ranges, or None when row r continues prompt r, ``cache`` the rows' own
    per-layer (k, v) [B, H, S, C/H]. Returns logits [B, vocab_size]: the same as the full
    forward of each row's prompt and tokens, with a prompt shared by several rows kept and read
    once for all of them."""
    T0 = prefix[0][0].shape[2]
    dev = tokens.device
    if step >= cache[0][0].shape[2]:
        raise ValueError(f"step {step} exceeds the KV cache length {cache[0][0].shape[2]}")
    if prefix_len is None:
        prefix_len = torch.full((tokens.shape[0],), T0, device=dev)
    prefix_len = prefix_len.to(dev)
    pos = prefix_len + step  # [B]
    last = int(pos.max())
    if last >= model.config.block_size:
        raise ValueError(f"position {last} exceeds the KV cache "
                         f"(model.block_size={model.config.block_size})")
    dense, banded = visible_keys(model.config, prefix_len, T0, step, last)
    x = model.wpe.add(model.wte(tokens), pos).unsqueeze(1)  # [B, 1, C]
    rot = model.wpe.rotation(pos[:, None])
    for block, (pk, pv), (k_cache, v_cache) in zip(model.blocks, prefix, cache):
        prefix_ok, own_ok = dense if block.attn.window is None else banded
        x = x + attend(block.attn, block.ln_1(x), rot, pk, pv, groups, k_cache, v_cache, step,
                       prefix_ok, own_ok)
        x = x + block.mlp(block.ln_2(x))
    return model.head(model.ln_f(x[:, 0]))
