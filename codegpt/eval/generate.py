"""Sampling from a model: batched generation with a KV cache, per-sequence stop strings, and
the mean token log-probability used for Codex's mean-logp reranking. The sampling functions
are in ``codegpt.eval.sampling``, the decoding against shared prompts in ``codegpt.eval.decode``.

Reproducibility: each sample draws its random numbers from its own generator, seeded from
(seed, sample index), so sample i of a prompt is the same whatever the batch size or the
other prompts in the call.

Batches mix prompts of any lengths (sorted by length, so padding stays small). Each distinct
prompt of a batch is run once and its keys/values kept once, right-padded; the n samples of a
prompt all read that one copy, which is what makes pass@k sampling cheap.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from codegpt.errors import ConfigError
from codegpt.eval.config import SamplingSection
from codegpt.eval.decode import decode_step, prefill, prompt_groups
from codegpt.eval.healing import Healer, split_last_piece
from codegpt.eval.sampling import (cut_at_stop, kept_tokens, pick_tokens, sample_generator,
                                   stop_window)
from codegpt.model import GPT, KVCache
from codegpt.tokenizer.bpe import EOT, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX
from codegpt.train.fim import Fim

log = logging.getLogger(__name__)



@dataclass
class Completion:
    text: str              # the completion, cut before the first stop string
    token_ids: list[int]   # the generated tokens kept in ``text`` (no stop text, no EOT)
    mean_logp: float       # Codex's mean-logp reranking score: what it covers, below
    """Mean log p(token) under the model (temperature 1) over the completion's tokens and the
    token that ended it, as Codex's reranking scored them: at <|endoftext|> ("eot") that token
    is scored too; at a stop string ("stop") the first generated token whose decoded text
    reaches into the stop string is scored too (it was generated, then cut), tokens after it
    are not; at "length" the tokens of ``token_ids``. So a completion that ends at once scores
    the probability of ending there, not 0.0, and never wins the reranking by default; with no
    scored token at all (``max_new_tokens`` 0) it is -inf."""
    finish_reason: str     # "stop" (a stop string), "eot" (<|endoftext|>) or "length"


# --- the batch loop ------------------------------------------------------------------------

@dataclass
class _Row:
    prompt: int
    sample: int
    ids: list[int]
    logps: list[float]
    gen: torch.Generator
    healed: str = ""       # the prompt's last piece, which the first tokens must reproduce
    rest: bytes = b""      # what of it is still to reproduce

    def __post_init__(self) -> None:
        self.rest = self.healed.encode("utf-8", "surrogatepass")


def _take(tokenizer, r: _Row, tok: int, logp: float, eot_id: int | None, stop: tuple[str, ...],
          window: int, budget: int) -> tuple[str, str] | None:
    """Row r's next token: appended (unless it is <|endoftext|>, of which only the log-prob is
    kept, see ``Completion.mean_logp``); (text, finish_reason) when the row is done, else None."""
    if eot_id is not None and tok == eot_id:
        r.logps.append(logp)
        return tokenizer.decode(r.ids), "eot"
    r.ids.append(tok)
    r.logps.append(logp)
    if stop and (text := cut_at_stop(tokenizer, r.ids, stop, window, len(r.healed))) is not None:
        return text, "stop"
    if len(r.ids) >= budget:
        return tokenizer.decode(r.ids), "length"
    return None


def _prefill_prompts(model: GPT, prompt_ids: list[list[int]], device
                     ) -> tuple[KVCache, list[int], torch.Tensor, torch.Tensor]:
    """Each distinct prompt of the rows run once, right-padded to the longest: returns the
    prompts' keys/values [P, H, T0, C/H] per layer, each row's prompt index, each row's first
    logits [B, V] and each row's prompt length [B]."""
    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = [distinct.setdefault(tuple(ids), len(distinct)) for ids in prompt_ids]
    lengths = [len(ids) for ids in distinct]
    idx = torch.zeros(len(distinct), max(lengths), dtype=torch.long, device=device)
    for p, ids in enumerate(distinct):
        idx[p, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    prompt_len = torch.tensor(lengths, device=device)
    prefix = model.new_kv_cache(len(distinct), max(lengths), device=device)
    first = prefill(model, idx, prompt_len, prefix)  # [P, V]
    row_sel = torch.tensor(row_prompt, device=device)
    return prefix, row_prompt, first.index_select(0, row_sel), prompt_len.index_select(0, row_sel)


@torch.no_grad()
def _generate_batch(model: GPT, tokenizer, prompt_ids: list[list[int]], rows: list[_Row], *,
                    max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                    stop: tuple[str, ...], eot_id: int | None, device,
                    healer: Healer | None = None) -> list[tuple[_Row, str, str]]:
    """Generate for a batch of rows (the rows of a prompt next to each other; prompts of any
    lengths); returns (row, text, finish_reason).

    Each distinct prompt goes through the model once and its keys/values are kept once; every
    row then decodes against its prompt's keys/values plus its own cache (``decode_step``).
    Rows finish on their own and leave the batch. Rows with a healed text are held to it
    (``Healer``) until it is reproduced."""
    prefix, row_prompt, logits, row_len = _prefill_prompts(model, prompt_ids, device)
    # a row may generate up to max_new_tokens, within the model's context after its own prompt
    block = model.config.block_size
    budgets = [min(max_new_tokens, block - len(prompt_ids[i])) for i in range(len(rows))]
    cache = model.new_kv_cache(len(rows), max(budgets), device=device)
    aligned = prefix[0][0].shape[0] == len(rows)  # row r continues prompt r: no groups needed
    window = stop_window(stop)
    active = list(range(len(rows)))  # positions in the batch of the unfinished rows
    done: list[tuple[_Row, str, str]] = []
    for step in range(max(budgets)):
        live = [rows[i] for i in active]
        uniforms = None
        if temperature > 0:
            uniforms = torch.cat([torch.rand(1, generator=r.gen) for r in live])
        allowed = healer.constrain(logits, [r.rest for r in live]) if healer else logits
        nxt = pick_tokens(allowed, temperature, top_p, top_k, uniforms)
        # the model's own probability of the token (as if unconstrained), for mean_logp
        logp = torch.log_softmax(logits.float(), -1).gather(1, nxt[:, None]).squeeze(1)
        keep = []
        for j, (r, tok, lp) in enumerate(zip(live, nxt.tolist(), logp.tolist())):
            if r.rest:
                r.rest = healer.advance(r.rest, tok)
            end = _take(tokenizer, r, tok, lp, eot_id, stop, window, budgets[active[j]])
            if end is None:
                keep.append(j)
            else:
                done.append((r, *end))
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
        groups = None if aligned else prompt_groups([row_prompt[i] for i in active])
        logits = decode_step(model, nxt, prefix, groups, cache, step, row_len)
    for i in active:  # only with max_new_tokens=0
        done.append((rows[i], tokenizer.decode(rows[i].ids), "length"))
    return done


def _encode(tokenizer, prompts: list[str]) -> list[list[int]]:
    eot = tokenizer.token_to_id(EOT)
    return [tokenizer.encode(t, add_special_tokens=False).ids or [eot] for t in prompts]


def prompt_room(block: int, max_new_tokens: int) -> int:
    """The tokens of a prompt that a context of ``block`` keeps beside the completion's."""
    return block - min(max(max_new_tokens, 0), block // 2)


def prompts_cut(tokenizer, prompts: list[str], block: int, max_new_tokens: int,
                warn: bool = False) -> int:
    """How many of ``prompts`` ``encode_prompts`` cuts to their last tokens to fit (``warn``:
    and say so in one warning)."""
    return _count_cut(_encode(tokenizer, prompts), block, max_new_tokens, warn)


def _count_cut(encoded: list[list[int]], block: int, max_new_tokens: int, warn: bool) -> int:
    keep = prompt_room(block, max_new_tokens)
    cut = sum(len(ids) > keep for ids in encoded)
    if cut and warn:
        log.warning("%d of %d prompts were longer than %d tokens; kept their last %d tokens to "
                    "leave %d for the completion (model.block_size=%d, max_new_tokens=%d)",
                    cut, len(encoded), keep, keep, block - keep, block, max_new_tokens)
    return cut


def encode_prompts(tokenizer, prompts: list[str], block: int, max_new_tokens: int,
                   warn: bool = True) -> list[list[int]]:
    """Each prompt's token ids (<|endoftext|> for an empty one), at most
    block - min(max_new_tokens, block // 2) of them: a longer prompt keeps its end and leaves
    the completion its whole budget, or half the context when the budget is larger (keeping
    block - 1 would leave room for one token). One warning per call (``warn``), not one per
    prompt, which would drown a benchmark's log."""
    encoded = _encode(tokenizer, prompts)
    _count_cut(encoded, block, max_new_tokens, warn)
    keep = prompt_room(block, max_new_tokens)
    return [ids[-keep:] for ids in encoded]


def generate(model: GPT, tokenizer, prompts: list[str], sampling: SamplingSection | None = None,
             *, seed: int | list[int] | None = None, device=None, ignore_eot: bool = False,
             warn_truncation: bool = True, **settings) -> list[list[Completion]]:
    """``sampling.n`` completions of every prompt: result[p][i] is sample i of prompts[p], a
    function of (seed, i) and the prompt alone.

    ``sampling`` (``codegpt.eval.config.SamplingSection``, its defaults where not given) holds
    every setting; ``settings`` replaces some of its fields by name (``n=4, temperature=0``).
    ``seed`` replaces ``sampling.seed`` and may be a list with one seed per prompt.
    ``tokenizer`` is a ``tokenizers.Tokenizer``. ``temperature`` 0 is greedy. A sequence
    finishes on its own at a stop string (cut before it), at <|endoftext|> or after
    ``max_new_tokens`` (or the model's context); the rest of its batch goes on.
    ``ignore_eot`` (benchmarks) keeps generating through <|endoftext|>. A caller that calls
    this in chunks says ``warn_truncation=False`` and warns once itself (``encode_prompts``).
    ``heal`` (on by default) applies token healing (``codegpt.eval.healing``): the prompt's
    last piece is backed off and regenerated; the completion is the text after it, and its
    token_ids and mean_logp count only tokens that hold a byte of the completion.
    """
    s = dataclasses.replace(sampling or SamplingSection(), **settings)
    seeds = _seeds(s, seed, len(prompts))
    max_new_tokens = s.max_new_tokens
    stop = tuple(x for x in (s.stop or ()) if x)
    eot_id = None if ignore_eot else tokenizer.token_to_id(EOT)
    heads, tails = zip(*(split_last_piece(tokenizer, p) if s.heal else (p, "") for p in prompts))
    encoded = encode_prompts(tokenizer, list(heads), model.config.block_size, max_new_tokens,
                             warn=warn_truncation)
    return _sample(model, tokenizer, encoded, list(tails), s, seeds, device, stop, eot_id)


def _seeds(s: SamplingSection, seed: int | list[int] | None, count: int) -> list[int]:
    """One seed per prompt: ``seed`` (one for all, or a list) or ``s.seed``."""
    if s.n < 1 or s.batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={s.n}, "
                         f"batch_size={s.batch_size}")
    seed = s.seed if seed is None else seed
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * count
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return seeds


def _sample(model: GPT, tokenizer, encoded: list[list[int]], tails: list[str],
            s: SamplingSection, seeds: list[int], device, stop: tuple[str, ...],
            eot_id: int | None) -> list[list[Completion]]:
    """``s.n`` completions of each encoded prompt (``tails``: each one's healed last piece)."""
    n = s.n
    device = torch.device(device) if device is not None else model.wte.weight.device
    healer = Healer(tokenizer) if any(tails) else None
    was_training = model.training
    model.eval()
    # prompts of similar length batch together (less padding); within a prompt, by sample
    items = sorted(((len(encoded[p]), p, i) for p in range(len(encoded)) for i in range(n)))
    results: list[list[Completion | None]] = [[None] * n for _ in encoded]
    for start in range(0, len(items), s.batch_size):
        end = min(start + s.batch_size, len(items))
        rows = [_Row(p, i, [], [], sample_generator(seeds[p], i), tails[p])
                for _, p, i in items[start:end]]
        done = _generate_batch(model, tokenizer, [encoded[r.prompt] for r in rows], rows,
                               max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                               top_p=s.top_p, top_k=s.top_k, stop=stop, eot_id=eot_id,
                               device=device, healer=healer)
        for r, text, reason in done:
            results[r.prompt][r.sample] = _completion(tokenizer, healer, r, text, reason)
    model.train(was_training)
    return results  # type: ignore[return-value]


def fim_prompt_ids(tokenizer, prefix: str, suffix: str, spm: bool, block: int,
                   max_new_tokens: int, cut: list[int] | None = None) -> list[int]:
    """The infilling prompt as training laid it out (``codegpt.train.fim``): PSM
    ``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>``, or SPM
    ``<|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix``; the model writes the
    middle next. Prefix and suffix are encoded as text, each on its own (as training cut
    them). Where they do not fit beside the middle's budget (``encode_prompts``' rule), the
    prefix keeps its end and the suffix its start, each at least half of the room; ``cut``
    (a list) then gets the room appended, for the caller's one warning."""
    fim = Fim(0.0, 0.0, *(tokenizer.token_to_id(t) for t in
                          (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)))
    pre, suf = (tokenizer.encode(t, add_special_tokens=False).ids for t in (prefix, suffix))
    room = max(0, block - min(max(max_new_tokens, 0), block // 2) - 3)
    if len(pre) + len(suf) > room:
        n_suf = min(len(suf), max(room // 2, room - len(pre)))
        pre, suf = pre[len(pre) - (room - n_suf):] if room > n_suf else [], suf[:n_suf]
        if cut is not None:
            cut.append(room)
    return fim.layout(pre, suf, [], spm)


def encode_fim_prompts(tokenizer, pairs: list[tuple[str, str]], spm: bool, block: int,
                       max_new_tokens: int, warn: bool = True) -> list[list[int]]:
    """``fim_prompt_ids`` of every (prefix, suffix) pair, with one warning for those cut to fit
    (``warn``)."""
    cut: list[int] = []
    encoded = [fim_prompt_ids(tokenizer, prefix, suffix, spm, block, max_new_tokens, cut)
               for prefix, suffix in pairs]
    if cut and warn:
        log.warning("%d of %d prefix + suffix pairs were longer than %d tokens: kept the "
                    "prefix's end and the suffix's start (model.block_size=%d, "
                    "max_new_tokens=%d)", len(cut), len(pairs), cut[0], block, max_new_tokens)
    return encoded


def infill(model: GPT, tokenizer, pairs: list[tuple[str, str]],
           sampling: SamplingSection | None = None, *, spm: bool = False,
           seed: int | list[int] | None = None, device=None, warn_truncation: bool = True,
           **settings) -> list[list[Completion]]:
    """``sampling.n`` middles of every (prefix, suffix) pair: result[p][i] is sample i of
    pairs[p], a function of (seed, i) and the pair alone, as ``generate``'s are. The prompt is
    ``fim_prompt_ids``' (PSM, or SPM with ``spm``). A middle ends at <|endoftext|> (the end the
    model learned for it; ``sampling.stop`` does not apply) or after ``max_new_tokens``
    (finish_reason "length": the middle is cut). No token healing: training cut the text into
    prefix, middle and suffix at characters and encoded each on its own, as here. Pairs cut to
    fit the context get one warning per call (``warn_truncation``)."""
    s = dataclasses.replace(sampling or SamplingSection(), **settings)
    seeds = _seeds(s, seed, len(pairs))
    encoded = encode_fim_prompts(tokenizer, pairs, spm, model.config.block_size,
                                 s.max_new_tokens, warn_truncation)
    return _sample(model, tokenizer, encoded, [""] * len(pairs), s, seeds, device, (),
                   tokenizer.token_to_id(EOT))


def _completion(tokenizer, healer: Healer | None, r: _Row, text: str, reason: str) -> Completion:
    """Row r's completion: the text after its healed prefix, the tokens that hold a byte of
    it, and the mean log-prob of those and of the token that ended it (Completion.mean_logp)."""
    k = len(r.ids) if reason != "stop" else kept_tokens(tokenizer, r.ids, text)
    h = healer.healed_tokens(r.ids, r.healed.encode("utf-8", "surrogatepass")) if r.healed else 0
    if r.healed:
        text = text[len(r.healed):] if text.startswith(r.healed) else ""
    scored = r.logps[h: max(k, h) + 1] if reason == "stop" else r.logps[h:]
    mean = float(np.mean(scored)) if scored else float("-inf")
    return Completion(text, r.ids[h:max(k, h)], mean, reason)



FIM_ORDERS = ("auto", "psm", "spm")


def fim_order(trained: dict | None, asked: str, folder) -> str | None:
    """The infilling order to prompt a model with (``asked``: auto, psm or spm): what it was
    trained on (``trained``: ``codegpt.checkpoint.fim_training``'s), PSM where it learned both;
    None for auto on a model that never learned FIM (the caller decides: refuse, or go left to
    right). An order forced on such a model is used with a warning; an order a FIM model never
    saw is a ConfigError."""
    if trained is None:
        if asked == "auto":
            return None
        log.warning("%s was not trained to fill in the middle: its middles mean little", folder)
        return asked
    spm_rate = trained["fim_spm_rate"]
    if asked == "auto":
        return "spm" if spm_rate >= 1 else "psm"
    if (asked == "spm" and spm_rate <= 0) or (asked == "psm" and spm_rate >= 1):
        raise ConfigError(f"{folder} was trained on fill-in-the-middle with fim_spm_rate="
                          f"{spm_rate:g} (in {trained['checkpoint']}): it never saw {asked} "
                          f"order; use {'psm' if asked == 'spm' else 'spm'}")
    return asked
