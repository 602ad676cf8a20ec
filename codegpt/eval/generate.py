"""Sampling from a checkpoint: batched generation with a KV cache, nucleus / top-k sampling,
per-sequence stop strings, and the mean token log-probability used for Codex's mean-logp
reranking.

Reproducibility: each sample draws its random numbers from its own generator, seeded from
(seed, sample index), so sample i of a prompt is the same whatever the batch size or the
other prompts in the call.

Batches mix prompts of any lengths (sorted by length, so padding stays small). Each distinct
prompt of a batch is run once and its keys/values kept once, right-padded; the n samples of a
prompt all read that one copy, which is what makes pass@k sampling cheap.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import EOT

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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(name: str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` (or None): bfloat16 on a GPU that has it, else float32; or a name in DTYPES."""
    if name in (None, "auto"):
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_checkpoint_model(folder: str | Path, device: str | torch.device = "cpu",
                          dtype: str | torch.dtype | None = None) -> tuple[GPT, ModelConfig]:
    """The model of a checkpoint folder (its config.yaml's ``model:`` section and weights),
    in eval mode on ``device``, its weights in ``dtype`` (a torch dtype or a name for
    ``inference_dtype``; float32 on CPU by default). Raises CheckpointError for a missing or
    corrupt checkpoint."""
    import yaml

    from codegpt.train.checkpoint import CheckpointError, load_model_state, verify
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
    if not isinstance(dtype, torch.dtype):
        dtype = inference_dtype(dtype, device)
    return model.to(device=device, dtype=dtype).eval(), cfg


# --- sampling ------------------------------------------------------------------------------

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
    no sort (see ``nucleus_mask``); top-k walks its k tokens from the most likely down."""
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
    probs = torch.exp(vals - torch.logsumexp(scaled, -1, keepdim=True))
    if nucleus:
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    cdf = probs.cumsum(-1)
    pos = torch.searchsorted(cdf, u * cdf[:, -1:], side="right")
    pos = torch.minimum(pos, (probs > 0).sum(-1, keepdim=True) - 1)  # kept tokens are a prefix
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


def _groups(prompts: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal entries: (value, first index, end index), for rows sorted by prompt."""
    out: list[tuple[int, int, int]] = []
    for j, p in enumerate(prompts):
        if out and out[-1][0] == p:
            out[-1] = (p, out[-1][1], j + 1)
        else:
            out.append((p, j, j + 1))
    return out


@torch.no_grad()
def _generate_batch(model: GPT, tokenizer, prompt_ids: list[list[int]], rows: list[_Row], *,
                    max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                    stop: tuple[str, ...], eot_id: int | None, device) -> list[tuple[_Row, str, str]]:
    """Generate for a batch of rows (the rows of a prompt next to each other; prompts of any
    lengths); returns (row, text, finish_reason).

    Each distinct prompt goes through the model once (right-padded to the longest) and its
    keys/values are kept once; every row then decodes against its prompt's keys/values plus its
    own cache (``GPT.decode_with_prefix``). Rows finish on their own and leave the batch."""
    block = model.config.block_size
    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = [distinct.setdefault(tuple(ids), len(distinct)) for ids in prompt_ids]
    lengths = [len(ids) for ids in distinct]
    T0 = max(lengths)
    idx = torch.zeros(len(distinct), T0, dtype=torch.long, device=device)
    for p, ids in enumerate(distinct):
        idx[p, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    prompt_len = torch.tensor(lengths, device=device)
    prefix = model.new_kv_cache(len(distinct), T0, device=device)
    first = model.prefill(idx, prompt_len, prefix)  # [P, V]
    row_sel = torch.tensor(row_prompt, device=device)
    logits = first.index_select(0, row_sel)
    row_len = prompt_len.index_select(0, row_sel)  # [B]: each row's prompt length
    # a row may generate up to max_new_tokens, within the model's context after its own prompt
    budgets = [min(max_new_tokens, block - len(prompt_ids[i])) for i in range(len(rows))]
    cache = model.new_kv_cache(len(rows), max(budgets), device=device)
    aligned = len(distinct) == len(rows)  # row r continues prompt r: no groups needed
    # a stop string of L bytes ends inside the last L + 1 tokens (every token is at least one
    # byte), so each step decodes only those; the whole text is decoded once a stop shows up
    window = max((len(s.encode()) for s in stop), default=0) + 1
    active = list(range(len(rows)))  # positions in the batch of the unfinished rows
    done: list[tuple[_Row, str, str]] = []
    for step in range(max(budgets)):
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
                tail = tokenizer.decode(r.ids[-window:])
                if any(st in tail for st in stop):
                    text = tokenizer.decode(r.ids)
                    cut = _find_stop(text, stop, 0)
                    if cut >= 0:
                        done.append((r, text[:cut], "stop"))
                        continue
            if len(r.ids) >= budgets[active[j]]:
                done.append((r, tokenizer.decode(r.ids), "length"))
                continue
            keep.append(j)
        active = [active[j] for j in keep]
        if not keep:
            break
        if len(keep) < len(live):  # drop finished rows from the batch and its caches
            sel = torch.tensor(keep, device=device)
            cache = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in cache]
            if aligned:
                prefix = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in prefix]
            nxt = nxt.index_select(0, sel)
            row_len = row_len.index_select(0, sel)
        groups = None if aligned else _groups([row_prompt[i] for i in active])
        logits = model.decode_with_prefix(nxt, prefix, groups, cache, step, row_len)
    for i in active:  # only with max_new_tokens=0
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
             stop=DEFAULT_STOP, seed: int | list[int] = 0, batch_size: int = 16, device=None,
             ignore_eot: bool = False) -> list[list[Completion]]:
    """``n`` completions of every prompt: result[p][i] is sample i of prompts[p], a function
    of (seed, i) and the prompt alone; ``seed`` may be a list with one seed per prompt.

    ``tokenizer`` is a ``tokenizers.Tokenizer``. ``temperature`` 0 is greedy. A sequence
    finishes on its own at a stop string (cut before it), at <|endoftext|> or after
    ``max_new_tokens`` (or the model's context); the rest of its batch goes on.
    ``ignore_eot`` (benchmarks) keeps generating through <|endoftext|>.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
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
    # prompts of similar length batch together (less padding); within a prompt, by sample
    items = sorted(((len(encoded[p]), p, i) for p in range(len(prompts)) for i in range(n)))
    results: list[list[Completion | None]] = [[None] * n for _ in prompts]
    for start in range(0, len(items), batch_size):
        end = min(start + batch_size, len(items))
        rows = [_Row(p, i, [], [], sample_generator(seeds[p], i)) for _, p, i in items[start:end]]
        done = _generate_batch(model, tokenizer, [encoded[r.prompt] for r in rows], rows,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, top_k=top_k, stop=stop, eot_id=eot_id, device=device)
        for r, text, reason in done:
            k = len(r.ids) if reason != "stop" else _kept_tokens(tokenizer, r.ids, text)
            mean = float(np.mean(r.logps[:k])) if k else 0.0
            results[r.prompt][r.sample] = Completion(text, r.ids[:k], mean, reason)
    model.train(was_training)
    return results  # type: ignore[return-value]


def rerank_by_mean_logp(completions: list[Completion]) -> list[Completion]:
    """Codex's mean-logp reranking: the most likely completions first."""
    return sorted(completions, key=lambda c: c.mean_logp, reverse=True)


# --- benchmarking --------------------------------------------------------------------------

def time_generation(model: GPT, tokenizer, prompt: str | list[str], batch_size: int = 8,
                    new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                    repeats: int = 1, device=None) -> dict:
    """Decode throughput, timed after one warm-up call: ``batch_size`` samples of ``prompt``
    (as pass@k sampling draws n samples of a problem), or one sample of each prompt in a list of
    ``batch_size`` prompts. Exactly ``new_tokens`` each (no stop strings, <|endoftext|>
    ignored). Returns the best of ``repeats`` as tokens/s."""
    prompts, n = ([prompt], batch_size) if isinstance(prompt, str) else (list(prompt), 1)
    if len(prompts) * n != batch_size:
        raise ValueError(f"{len(prompts)} prompts do not make a batch of {batch_size}")
    kw = dict(n=n, max_new_tokens=new_tokens, temperature=temperature, top_p=top_p,
              stop=(), batch_size=batch_size, device=device, ignore_eot=True)
    generate(model, tokenizer, prompts, **{**kw, "max_new_tokens": 2})  # warm-up
    dev = torch.device(device) if device is not None else model.wte.weight.device
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        out = generate(model, tokenizer, prompts, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for cs in out for c in cs)
    return {"batch_size": batch_size, "new_tokens": new_tokens, "tokens": tokens,
            "seconds": best, "tokens_per_s": tokens / best}


# --- command line --------------------------------------------------------------------------

def cmd_sample(args: argparse.Namespace) -> int:
    """``codegpt sample --checkpoint DIR --tokenizer DIR --prompt TEXT``: print completions."""
    from codegpt.train.checkpoint import CheckpointError
    from codegpt.tokenizer.bpe import TokenizerError, load_tokenizer

    try:
        model, _ = load_checkpoint_model(args.checkpoint, args.device, args.dtype)
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
    add_device_arguments(p)
    p.set_defaults(func=cmd_sample)


def add_device_arguments(p) -> None:
    """--device and --dtype, shared by the commands that run a model."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights and activations: auto = bfloat16 on a GPU that has it, else "
                        "float32 (bfloat16 is also about 2x faster on CPUs with AVX512-BF16)")
