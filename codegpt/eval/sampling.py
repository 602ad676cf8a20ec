"""Small pure functions of sampling: per-sample random streams, nucleus (top-p) and top-k
token picking, and stop strings.

Reproducibility: each sample draws its random numbers from its own generator, seeded from
(seed, sample index), so sample i of a prompt is the same whatever the batch size or the
other prompts in the call. A row's pick depends on its own logits and uniform alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index``: independent streams, same for any batch size."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


SHORTLIST = 256  # the nucleus is first looked for among this many most (or least) likely tokens


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens are in each row's nucleus (top-p set): in descending order of probability,
    a token stays while the mass of the tokens before it is below ``top_p`` (the top token
    always stays). probs: [B, V] normalized; returns bool [B, V].

    Sorting the whole vocabulary every step costs more than the model's own work at small
    sizes (8 ms for 32 x 8192 on two CPU cores). A row's nucleus usually fits among its
    ``SHORTLIST`` most likely tokens (a trained model) or leaves out only a few of its least
    likely ones (a flat distribution), so each row tries those two partial sorts
    (``topk``) and only the rows that fit neither get a full sort. The decision is per row, so a
    row's nucleus never depends on the rest of the batch."""
    B, V = probs.shape
    keep = torch.ones_like(probs, dtype=torch.bool)
    todo = torch.arange(B, device=probs.device)
    total = probs.sum(-1)
    # cheap necessary conditions first, so rows that cannot fit skip a wasted partial sort:
    # SHORTLIST tokens hold at most SHORTLIST * max; the k_low least likely ones hold more than
    # total - top_p only if fewer than k_low tokens are at or below (total - top_p) / k_low.
    # A flat row leaves out more than (1 - top_p) * V tokens (the least likely ones each hold
    # less than the average mass): about 2.8x that for random weights at T=0.8.
    k_low = min(max(SHORTLIST, math.ceil(4 * (1 - top_p) * V)), V // 2)
    if V > SHORTLIST:
        maybe = todo[SHORTLIST * probs.amax(-1) >= top_p]
        if len(maybe):
            vals, idx = torch.topk(probs[maybe], SHORTLIST, dim=-1)  # descending
            before = vals.cumsum(-1) - vals
            fits = before[:, -1] >= top_p  # the cutoff falls inside the shortlist
            rows = maybe[fits]
            keep[rows] = False
            keep[rows[:, None], idx[fits]] = before[fits] < top_p
            todo = todo[~torch.isin(todo, rows)]
    if len(todo) and k_low < V // 2:
        small = (probs[todo] <= ((total[todo] - top_p) / k_low)[:, None]).sum(-1)
        maybe = todo[small < k_low]
        if len(maybe):
            low, lidx = torch.topk(probs[maybe], k_low, dim=-1, largest=False)  # ascending
            # mass of the strictly more likely tokens = total - (this token and all below it)
            before = total[maybe, None] - low.cumsum(-1)
            fits = before[:, -1] < top_p  # the least likely token outside the shortlist stays
            rows = maybe[fits]
            keep[rows[:, None], lidx[fits]] = before[fits] < top_p
            todo = todo[~torch.isin(todo, rows)]
    if len(todo):
        vals, order = torch.sort(probs[todo], dim=-1, descending=True)
        before = vals.cumsum(-1) - vals
        keep[todo[:, None], order] = before < top_p
    return keep


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next ids [B] from logits [B, V]: argmax when temperature == 0, else inverse-CDF sampling
    with one uniform per row (so a row's draw does not depend on the other rows).

    Plain and top-p sampling walk the cumulative distribution in vocabulary order, which needs
    no sort (see ``nucleus_mask``); top-k walks its k tokens from the most likely down. With
    both, the nucleus is cut from the top-k distribution renormalised (as transformers' TopK
    then TopP warpers do), so top_p keeps that share of what top-k left, not of the full mass."""
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    V = scaled.shape[-1]
    nucleus = 0.0 < top_p < 1.0
    u = uniforms.to(scaled.device).unsqueeze(1)
    if top_k <= 0 or top_k >= V:
        probs = torch.softmax(scaled, -1)
        if nucleus:
            probs = probs * nucleus_mask(probs, top_p)
        cdf = probs.cumsum(-1)
        # side="right": the first token whose cumulative mass exceeds the target, so a token
        # with zero probability (cut, or underflowed) is never picked
        pos = torch.searchsorted(cdf, u * cdf[:, -1:], side="right")
        return pos.clamp_(max=V - 1).squeeze(1)
    vals, order = torch.topk(scaled, top_k, dim=-1)
    probs = torch.softmax(vals, -1)  # renormalised over the top k, before the nucleus cut
    if nucleus:
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    cdf = probs.cumsum(-1)
    pos = torch.searchsorted(cdf, u * cdf[:, -1:], side="right")
    pos = torch.minimum(pos, (probs > 0).sum(-1, keepdim=True) - 1)  # kept tokens are a prefix
    return order.gather(1, pos).squeeze(1)


def stop_window(stop: tuple[str, ...]) -> int:
    """How many trailing tokens can hold the end of a stop string: one of L bytes ends inside
    the last L + 1 tokens (every token is at least one byte)."""
    return max((len(s.encode()) for s in stop), default=0) + 1


def cut_at_stop(tokenizer, ids: list[int], stop: tuple[str, ...], window: int,
                skip: int = 0) -> str | None:
    """The text of ``ids`` cut before its first stop string, or None while there is none.
    Called after every new token, so only the last ``window`` tokens (``stop_window``) are
    decoded; the whole text is decoded once a stop string shows up there. A stop string must
    end after the first ``skip`` characters (the healed text, which is the prompt's)."""
    tail = tokenizer.decode(ids[-window:])
    if not any(s in tail for s in stop):
        return None
    text = tokenizer.decode(ids)
    hits = [i for s in stop if (i := text.find(s, max(0, skip - len(s) + 1))) >= 0]
    return text[: min(hits)] if hits else None


def kept_tokens(tokenizer, ids: list[int], text: str) -> int:
    """How many leading tokens decode to a prefix no longer than ``text``."""
    if tokenizer.decode(ids) == text:
        return len(ids)
    k = 0
    while k < len(ids) and len(tokenizer.decode(ids[: k + 1])) <= len(text):
        k += 1
    return k
