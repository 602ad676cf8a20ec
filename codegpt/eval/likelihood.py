"""How likely a model finds the canonical solutions: the low-variance quality signal.

pass@k of a small model is 0 long before the model is useless; the log-probability of the
right answer keeps moving. For each HumanEval problem the prompt and its canonical solution are
tokenized together, as training would see them, and every token that holds a byte of the
solution is scored given all the tokens before it, including the one that straddles the
prompt's end. Bits per byte divides by the UTF-8 bytes those scored tokens cover (the solution
plus the straddled tail of the prompt), so the figure is comparable across tokenizers; nats per
token is the mean over the same tokens. No sampling: one forward pass per window. The texts are
encoded as the token shards were (``load_tokenizer``'s tokenizer): a special token's string in a
prompt or solution is text, never a special id.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from tqdm import tqdm

from codegpt.checkpoint import load_checkpoint_and_tokenizer
from codegpt.eval.generate import fim_prompt_ids
from codegpt.model import GPT
from codegpt.tokenizer.offsets import first_scored_token


@dataclass
class Likelihood:
    tokens: int            # scored tokens
    bytes: int            # UTF-8 bytes the scored tokens cover
    nats: float           # -sum log p of the scored tokens

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes if self.bytes else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "nats_per_token": self.nats_per_token,
                "bits_per_byte": self.bits_per_byte}


@torch.no_grad()
def token_logprobs(model: GPT, ids: list[int], first: int) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i in [first, len(ids)), each token seeing at most
    block_size - 1 tokens before it. A text that fits the context takes one forward pass; a
    longer one is scored in windows of block_size tokens advancing by half a block, each
    scoring only its new tokens (so every token sees at least half a block of context)."""
    block = model.config.block_size
    device = model.wte.weight.device
    stride = max(1, block // 2)
    pos = max(first, 1)  # the first token of a text has no context to be scored in
    out: list[torch.Tensor] = []
    while pos < len(ids):
        end = min(len(ids), max(pos + stride, block))  # score tokens [pos, end)
        start = max(0, end - block)                     # given the tokens [start, pos)
        x = torch.tensor(ids[start:end], device=device)[None]
        logits, _ = model(x[:, :-1])                   # position j predicts ids[start + j + 1]
        logp = torch.log_softmax(logits[0].float(), -1)
        picked = logp.gather(1, x[0, 1:, None]).squeeze(1)
        out.append(picked[pos - start - 1:].cpu())
        pos = end
    return torch.cat(out) if out else torch.zeros(0)


def solution_likelihood(model: GPT, tokenizer, prompt: str, solution: str,
                        joint: bool = True) -> Likelihood:
    """The likelihood of ``solution`` after ``prompt`` (see the module docstring). With
    ``joint=False`` the two are tokenized apart, as sampling without token healing sees them:
    the solution's own tokens are scored after the prompt's, over the solution's bytes."""
    if not joint:
        head = tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = head + tokenizer.encode(solution, add_special_tokens=False).ids
        scored = token_logprobs(model, ids, len(head))
        return Likelihood(tokens=len(scored), bytes=len(solution.encode("utf-8", "surrogatepass")),
                          nats=float(-scored.sum()))
    enc = tokenizer.encode(prompt + solution, add_special_tokens=False)
    first = first_scored_token(enc.offsets, len(prompt))
    scored = token_logprobs(model, enc.ids, first)
    start = enc.offsets[max(first, 1)][0] if max(first, 1) < len(enc.ids) else len(prompt)
    covered = (prompt + solution)[start:].encode("utf-8", "surrogatepass")
    return Likelihood(tokens=len(scored), bytes=len(covered), nats=float(-scored.sum()))


def canonical_likelihood(model: GPT, tokenizer, problems: dict[str, dict],
                         progress: bool = True, joint: bool = True) -> dict:
    """Per problem and overall (token- and byte-weighted over all problems) likelihood of the
    canonical solutions, as stored in results.json (``joint``: see ``solution_likelihood``)."""
    was_training = model.training
    model.eval()
    per: dict[str, Likelihood] = {}
    for task_id in tqdm(problems, desc="likelihood", unit="problem", disable=None if progress else True):
        p = problems[task_id]
        per[task_id] = solution_likelihood(model, tokenizer, p["prompt"], p["canonical_solution"],
                                           joint)
    model.train(was_training)
    return _summary(per, "canonical")


def checkpoint_likelihood(checkpoint, tokenizer, problems: dict[str, dict], device: str = "cpu",
                          dtype: str | None = None, joint: bool = True) -> dict:
    """``canonical_likelihood`` of a checkpoint (or run folder) with its tokenizer (refused
    unless it is the one the checkpoint records: ``checkpoint_tokenizer``)."""
    loaded = load_checkpoint_and_tokenizer(checkpoint, tokenizer, device=device, dtype=dtype)
    return canonical_likelihood(loaded.model, loaded.tokenizer, problems, joint=joint)


def _summary(per: dict[str, Likelihood], prefix: str) -> dict:
    """Token- and byte-weighted totals over the problems, and each problem's figures, under
    ``PREFIX_`` keys (``canonical_bits_per_byte``, ``middle_fim_per_problem``, ...)."""
    total = Likelihood(tokens=sum(v.tokens for v in per.values()),
                       bytes=sum(v.bytes for v in per.values()),
                       nats=sum(v.nats for v in per.values()))
    return {f"{prefix}_bits_per_byte": total.bits_per_byte,
            f"{prefix}_nats_per_token": total.nats_per_token,
            f"{prefix}_tokens": total.tokens, f"{prefix}_bytes": total.bytes,
            f"{prefix}_per_problem": {t: v.as_dict() for t, v in per.items()}}


def infill_likelihood(model: GPT, tokenizer, problems: dict[str, dict], spm: bool | None,
                      progress: bool = True) -> dict:
    """The likelihood of each infilling problem's canonical middle, in bits per byte of the
    middle, without sampling: left to right, after the prefix alone (``middle_l2r_*``), and,
    for a model that learned FIM (``spm`` not None), in the FIM prompt with the suffix
    (``middle_fim_*``, PSM or SPM as ``codegpt.eval.generate.fim_prompt_ids`` lays it out). The
    middle is encoded on its own in both, so both score the same tokens: the difference is
    what the suffix is worth to the model."""
    was_training = model.training
    model.eval()
    l2r: dict[str, Likelihood] = {}
    fim: dict[str, Likelihood] = {}
    for task_id in tqdm(problems, desc="middle likelihood", unit="problem",
                        disable=None if progress else True):
        p = problems[task_id]
        middle = p["canonical_solution"]
        l2r[task_id] = solution_likelihood(model, tokenizer, p["prompt"], middle, joint=False)
        if spm is not None:
            mid = tokenizer.encode(middle, add_special_tokens=False).ids
            head = fim_prompt_ids(tokenizer, p["prompt"], p["suffix"], spm,
                                  model.config.block_size, len(mid))
            scored = token_logprobs(model, head + mid, len(head))
            fim[task_id] = Likelihood(tokens=len(scored),
                                      bytes=len(middle.encode("utf-8", "surrogatepass")),
                                      nats=float(-scored.sum()))
    model.train(was_training)
    out = _summary(l2r, "middle_l2r")
    if fim:
        out.update(_summary(fim, "middle_fim"))
    return out
