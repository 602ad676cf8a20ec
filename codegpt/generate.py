"""Sampling from a checkpoint: batched generation with a KV cache, nucleus / top-k sampling,
per-sequence stop strings, and the mean token log-probability used for Codex's mean-logp
reranking.

Reproducibility: each sample draws its random numbers from its own generator, seeded from
(seed, sample index), so sample i of a prompt is the same whatever the batch size or the
other prompts in the call. Work items are batched only with items whose prompts have the same
number of tokens (the usual case: the n samples of one prompt), so no padding is ever needed
and every row of a batch sits at the same position.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer import EOT

log = logging.getLogger(__name__)

# Codex (Chen et al. 2021): stop at the start of a new top-level statement.
DEFAULT_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


class GenerateError(RuntimeError):
    """A checkpoint or tokenizer that cannot be used for generation."""


@dataclass
class Completion:
    text: str              # the completion, cut before the first stop string
    token_ids: list[int]   # the generated tokens kept in ``text`` (no stop text, no EOT)
    mean_logp: float       # mean log p(token) under the model (temperature 1) over token_ids
    finish_reason: str     # "stop" (a stop string), "eot" (<|endoftext|>) or "length"


# --- loading -------------------------------------------------------------------------------

def load_checkpoint_model(folder: str | Path, device: str | torch.device = "cpu"
                          ) -> tuple[GPT, ModelConfig]:
    """The model of a checkpoint folder (its config.yaml's ``model:`` section and weights),
    in eval mode on ``device``. Raises CheckpointError for a missing or corrupt checkpoint."""
    import yaml

    from codegpt.checkpoint import CheckpointError, load_model_state, verify
    from codegpt.config import ConfigError, from_dict

    folder = Path(folder)
    verify(folder)
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no config.yaml: cannot rebuild the model")
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
        model_raw = dict(raw["model"])
        model_raw.pop("size", None)
        cfg = from_dict(ModelConfig, model_raw, prefix="model.")
    except (yaml.YAMLError, KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {folder}: config.yaml has no usable model section ({e})"
                              ) from e
    model = GPT(cfg)
    state = load_model_state(folder)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {folder}: weights do not fit its model config ({e})"
                              ) from e
    return model.to(device).eval(), cfg


# --- sampling ------------------------------------------------------------------------------

def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index``: independent streams, same for any batch size."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next ids [B] from logits [B, V]: argmax when temperature == 0, else inverse-CDF sampling
    with one uniform per row (so a row's draw does not depend on the other rows)."""
    if temperature <= 0:
        return logits.argmax(-1)
    sorted_logits, order = torch.sort(logits.float() / temperature, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    if top_k > 0:
        probs[:, top_k:] = 0.0
    if 0.0 < top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        probs = probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf.device).unsqueeze(1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target).clamp_(max=probs.shape[1] - 1)
    # searchsorted could land on a zero-probability tail token only at u == total; step back.
    pos = torch.minimum(pos, (probs > 0).sum(-1, keepdim=True) - 1)
    return order.gather(1, pos).squeeze(1)


def _find_stop(text: str, stop: tuple[str, ...], start: int) -> int:
    """Index of the earliest stop string in text[start:], or -1."""
    hits = [i for s in stop if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else -1


@dataclass
class _Row:
    prompt: int
    sample: int
    ids: list[int]
    logps: list[float]
    gen: torch.Generator
    checked: int = 0    # characters of decoded text already searched for stop strings


@torch.no_grad()
def _generate_batch(model: GPT, tokenizer, prompt_ids: list[list[int]], rows: list[_Row], *,
                    max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                    stop: tuple[str, ...], eot_id: int | None, device) -> list[tuple[_Row, str, str]]:
    """Generate for rows sharing one prompt length; returns (row, text, finish_reason)."""
    block = model.config.block_size
    T0 = len(prompt_ids[0])
    budget = min(max_new_tokens, block - T0)
    cache = model.new_kv_cache(len(rows), T0 + budget, device=device)
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=device)  # [B, T0]
    logits = model.forward_cached(idx, cache, 0)[:, -1]
    longest_stop = max((len(s) for s in stop), default=0)
    active = list(range(len(rows)))  # positions in the batch of the unfinished rows
    done: list[tuple[_Row, str, str]] = []
    pos = T0
    for step in range(budget):
        live = [rows[i] for i in active]
        uniforms = None
        if temperature > 0:
            uniforms = torch.cat([torch.rand(1, generator=r.gen) for r in live])
        nxt = pick_tokens(logits, temperature, top_p, top_k, uniforms)
        logp = torch.log_softmax(logits.float(), -1).gather(1, nxt[:, None]).squeeze(1)
        nxt_list, logp_list = nxt.tolist(), logp.tolist()
        keep = []
        for j, r in enumerate(live):
            tok = nxt_list[j]
            if eot_id is not None and tok == eot_id:
                done.append((r, tokenizer.decode(r.ids), "eot"))
                continue
            r.ids.append(tok)
            r.logps.append(logp_list[j])
            if stop:
                text = tokenizer.decode(r.ids)
                cut = _find_stop(text, stop, max(0, r.checked - longest_stop))
                r.checked = len(text)
                if cut >= 0:
                    done.append((r, text[:cut], "stop"))
                    continue
            keep.append(j)
        if not keep or step == budget - 1:
            active = [active[j] for j in keep]
            break
        if len(keep) < len(live):  # drop finished rows from the batch and its cache
            sel = torch.tensor(keep, device=device)
            cache = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in cache]
            nxt = nxt.index_select(0, sel)
        active = [active[j] for j in keep]
        logits = model.forward_cached(nxt[:, None], cache, pos)[:, -1]
        pos += 1
    for i in active:
        done.append((rows[i], tokenizer.decode(rows[i].ids), "length"))
    return done


def _kept_tokens(tokenizer, ids: list[int], text: str) -> int:
    """How many leading tokens decode to a prefix no longer than ``text``."""
    if tokenizer.decode(ids) == text:
        return len(ids)
    k = 0
    while k < len(ids) and len(tokenizer.decode(ids[: k + 1])) <= len(text):
        k += 1
    return k


def generate(model: GPT, tokenizer, prompts: list[str], n: int = 1, max_new_tokens: int = 256,
             temperature: float = 0.2, top_p: float = 0.95, top_k: int = 0,
             stop=DEFAULT_STOP, seed: int = 0, batch_size: int = 16, device=None,
             ignore_eot: bool = False) -> list[list[Completion]]:
    """``n`` completions of every prompt: result[p][i] is sample i of prompts[p].

    ``tokenizer`` is a ``tokenizers.Tokenizer``. ``temperature`` 0 is greedy. A sequence
    finishes on its own at a stop string (cut before it), at <|endoftext|> or after
    ``max_new_tokens`` (or the model's context); the rest of its batch goes on.
    ``ignore_eot`` (benchmarks) keeps generating through <|endoftext|>.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    device = torch.device(device) if device is not None else model.wte.weight.device
    was_training = model.training
    model.eval()
    stop = tuple(s for s in (stop or ()) if s)
    eot_id = None if ignore_eot else tokenizer.token_to_id(EOT)
    block = model.config.block_size
    encoded = []
    for p, text in enumerate(prompts):
        ids = tokenizer.encode(text, add_special_tokens=False).ids or [tokenizer.token_to_id(EOT)]
        if len(ids) > block - 1:
            log.warning("prompt %d has %d tokens; keeping the last %d (model.block_size=%d)",
                        p, len(ids), block - 1, block)
            ids = ids[-(block - 1):]
        encoded.append(ids)
    # same-length prompts batch together; order within a length: prompt, then sample
    items = sorted(((len(encoded[p]), p, i) for p in range(len(prompts)) for i in range(n)))
    results: list[list[Completion | None]] = [[None] * n for _ in prompts]
    start = 0
    while start < len(items):
        length = items[start][0]
        end = start
        while end < len(items) and end - start < batch_size and items[end][0] == length:
            end += 1
        rows = [_Row(p, i, [], [], sample_generator(seed, i)) for _, p, i in items[start:end]]
        done = _generate_batch(model, tokenizer, [encoded[r.prompt] for r in rows], rows,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, top_k=top_k, stop=stop, eot_id=eot_id, device=device)
        for r, text, reason in done:
            k = len(r.ids) if reason != "stop" else _kept_tokens(tokenizer, r.ids, text)
            mean = float(np.mean(r.logps[:k])) if k else 0.0
            results[r.prompt][r.sample] = Completion(text, r.ids[:k], mean, reason)
        start = end
    model.train(was_training)
    return results  # type: ignore[return-value]


def rerank_by_mean_logp(completions: list[Completion]) -> list[Completion]:
    """Codex's mean-logp reranking: the most likely completions first."""
    return sorted(completions, key=lambda c: c.mean_logp, reverse=True)


# --- benchmarking --------------------------------------------------------------------------

def time_generation(model: GPT, tokenizer, prompt: str, batch_size: int = 8,
                    new_tokens: int = 128, temperature: float = 1.0, repeats: int = 1,
                    device=None) -> dict:
    """Decode throughput: ``batch_size`` samples of ``prompt``, exactly ``new_tokens`` each (no
    stop strings, <|endoftext|> ignored), timed after one warm-up call. Returns tokens/s."""
    kw = dict(n=batch_size, max_new_tokens=new_tokens, temperature=temperature, top_p=1.0,
              stop=(), batch_size=batch_size, device=device, ignore_eot=True)
    generate(model, tokenizer, [prompt], **{**kw, "max_new_tokens": 2})  # warm-up
    dev = torch.device(device) if device is not None else model.wte.weight.device
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        out = generate(model, tokenizer, [prompt], **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for c in out[0])
    return {"batch_size": batch_size, "new_tokens": new_tokens, "tokens": tokens,
            "seconds": best, "tokens_per_s": tokens / best}


# --- command line --------------------------------------------------------------------------

def cmd_sample(args: argparse.Namespace) -> int:
    """``codegpt sample --checkpoint DIR --tokenizer DIR --prompt TEXT``: print completions."""
    from codegpt.checkpoint import CheckpointError
    from codegpt.tokenizer import TokenizerError, load_tokenizer

    try:
        model, _ = load_checkpoint_model(args.checkpoint, args.device)
        tokenizer = load_tokenizer(args.tokenizer)
        if model.config.vocab_size != tokenizer.get_vocab_size():
            raise TokenizerError(
                f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the checkpoint's model "
                f"has vocab_size={model.config.vocab_size}: use the tokenizer it was trained with")
    except (CheckpointError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. a corrupt tokenizer.json
        print(f"error: cannot load the tokenizer at {args.tokenizer} ({e})", file=sys.stderr)
        return 2
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    stop = () if args.no_stop else DEFAULT_STOP
    out = generate(model, tokenizer, [prompt], n=args.n, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, stop=stop,
                   seed=args.seed)[0]
    for i, c in enumerate(out):
        print(f"--- sample {i} (mean logp {c.mean_logp:.3f}, {len(c.token_ids)} tokens, "
              f"{c.finish_reason})")
        print(prompt + c.text)
    return 0


def add_parser(sub) -> None:
    """Register ``sample`` on the ``codegpt`` subparsers."""
    p = sub.add_parser("sample", help="sample completions of a prompt from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoints/step_NNNNNNN folder")
    p.add_argument("--tokenizer", required=True, help="the tokenizer folder (or tokenizer.json)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in --prompt")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stop", action="store_true", help="do not stop at Codex's stop strings")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
