"""Likelihood of the canonical solutions: scoring every solution token, straddlers included."""

import math

import pytest
import torch

from architectures import OPTIONS, perturb

from codegpt.tokenizer.offsets import first_scored_token
from codegpt.eval.likelihood import (Likelihood, canonical_likelihood,
                                     solution_likelihood, token_logprobs)
from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import load_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from test_generate import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("lik"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def model_for(tok, block: int = 32, **options) -> GPT:
    torch.manual_seed(0)
    return perturb(GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=block,
                                   vocab_size=tok.get_vocab_size(), **options))).eval()


@torch.no_grad()
def reference_logprobs(model: GPT, ids: list[int], first: int) -> list[float]:
    """One full forward over the whole text (it must fit the context)."""
    logits, _ = model(torch.tensor(ids[:-1])[None])
    logp = torch.log_softmax(logits[0].float(), -1)
    return [float(logp[i - 1, ids[i]]) for i in range(max(first, 1), len(ids))]


def test_a_text_that_fits_is_scored_as_the_full_forward_does(tok):
    model = model_for(tok, block=64)
    ids = tok.encode("def add(a, b):\n    return a + b\n").ids
    for first in (0, 1, 3, len(ids) - 1):
        got = token_logprobs(model, ids, first).tolist()
        assert got == pytest.approx(reference_logprobs(model, ids, first), abs=1e-5)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_long_text_is_scored_once_per_token_with_at_least_half_a_block_of_context(tok, options):
    model = model_for(tok, block=16, **options)
    ids = tok.encode("import os\n" * 30).ids
    assert len(ids) > 3 * 16
    got = token_logprobs(model, ids, 5)
    assert len(got) == len(ids) - 5 and torch.isfinite(got).all()
    # the tokens of the first window see their whole history, as in one forward pass
    assert got[:16 - 5].tolist() == pytest.approx(reference_logprobs(model, ids[:16], 5),
                                                  abs=1e-5)
    # windows of 16 tokens advancing by 8: token 40 is scored in the window [32, 48), given
    # the 8 tokens 32..39
    with torch.no_grad():
        logits, _ = model(torch.tensor(ids[32:40])[None])
    alone = float(torch.log_softmax(logits[0, -1].float(), -1)[ids[40]])
    assert float(got[40 - 5]) == pytest.approx(alone, abs=1e-5)


def test_the_token_that_straddles_the_prompt_end_is_scored():
    # offsets of "ab|c d" split as ["ab", "c", " d"] with the prompt "a": "ab" straddles
    assert first_scored_token([(0, 2), (2, 3), (3, 5)], 1) == 0
    assert first_scored_token([(0, 2), (2, 3), (3, 5)], 2) == 1
    assert first_scored_token([(0, 2), (2, 3), (3, 5)], 5) == 3


def test_solution_likelihood_covers_the_solution_and_its_units_agree(tok):
    model = model_for(tok, block=64)
    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    solution = "    return a + b\n"
    lik = solution_likelihood(model, tok, prompt, solution)
    enc = tok.encode(prompt + solution)
    first = first_scored_token(enc.offsets, len(prompt))
    assert lik.tokens == len(enc.ids) - first
    assert lik.bytes >= len(solution.encode())
    want = -sum(reference_logprobs(model, enc.ids, first))
    assert lik.nats == pytest.approx(want, rel=1e-5)
    assert lik.bits_per_byte == pytest.approx(lik.nats / math.log(2) / lik.bytes)
    assert lik.nats_per_token == pytest.approx(lik.nats / lik.tokens)


def test_a_model_that_learned_the_solution_finds_it_more_likely(tok):
    prompt, solution = "def sq(x):\n", "    return x * x\n"
    model = model_for(tok, block=64).train()
    before = solution_likelihood(model.eval(), tok, prompt, solution).bits_per_byte
    ids = torch.tensor(tok.encode(prompt + solution).ids)[None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = solution_likelihood(model.eval(), tok, prompt, solution).bits_per_byte
    assert after < before / 3


def test_canonical_likelihood_reports_overall_and_per_problem(tok):
    from codegpt.eval.humaneval import load_problems

    problems = dict(list(load_problems().items())[:3])
    model = model_for(tok, block=32)
    out = canonical_likelihood(model, tok, problems, progress=False)
    per = out["canonical_per_problem"]
    assert set(per) == set(problems)
    total = Likelihood(sum(v["tokens"] for v in per.values()), sum(v["bytes"] for v in per.values()),
                       sum(v["nats"] for v in per.values()))
    assert out["canonical_bits_per_byte"] == pytest.approx(total.bits_per_byte)
    assert out["canonical_nats_per_token"] == pytest.approx(total.nats_per_token)
    assert not model.training


def test_likelihood_only_from_the_command_line(tok, tmp_path, capsys):
    import json

    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.cli import main

    tok_dir = make_tokenizer(tmp_path)
    vocab = load_tokenizer(tok_dir).get_vocab_size()
    folder, _ = make_checkpoint(tmp_path / "run" / "checkpoints", vocab)
    argv = ["eval", "humaneval", "--likelihood-only", "--tokenizer", str(tok_dir),
            "--limit", "4", "--out", str(tmp_path / "ev")]
    assert main(argv + ["--checkpoint", str(tmp_path / "run")]) == 0  # a run folder: its newest
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["likelihood_only"] and results["problems"] == 4
    assert len(results["canonical_per_problem"]) == 4
    assert f"{results['canonical_bits_per_byte']:.4f} bits/byte" in out
    assert not (tmp_path / "ev" / "samples.jsonl").exists()  # nothing was sampled
    assert main(argv) == 2
    assert "--likelihood-only needs --checkpoint" in capsys.readouterr().err


def test_special_token_text_in_a_prompt_or_solution_is_text(tok_dir, tok, monkeypatch):
    """A literal <|endoftext|> / <|fim_prefix|> in the prompt or the solution is scored as the
    text it is, with the token shards' ids (joint and apart), never as a special id."""
    from codegpt.eval import likelihood
    from codegpt.tokenizer.bpe import SPECIAL_TOKENS
    from test_generate import shard_ids

    prompt = 'def marker():\n    """<|fim_prefix|> or <|endoftext|>."""\n'
    solution = '    return "<|endoftext|>"\n<|fim_suffix|>'
    specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    scored, score = [], likelihood.token_logprobs

    def watched(model, ids, first):
        scored.append(list(ids))
        return score(model, ids, first)

    monkeypatch.setattr(likelihood, "token_logprobs", watched)
    model = model_for(tok, block=64)
    joint = solution_likelihood(model, tok, prompt, solution)
    apart = solution_likelihood(model, tok, prompt, solution, joint=False)
    assert scored == [shard_ids(tok_dir, prompt + solution),
                      shard_ids(tok_dir, prompt) + shard_ids(tok_dir, solution)]
    assert not specials & set(scored[0] + scored[1])
    assert apart.bytes == len(solution.encode()) and joint.bytes >= len(solution.encode())
