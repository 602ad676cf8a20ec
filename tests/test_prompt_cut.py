"""bench.prompt_cut: the canonical solutions scored after each prompt's last K tokens against
after the whole prompt, on a model whose context holds them whole."""

import pytest

from bench.prompt_cut import cut_costs, last_tokens
from codegpt.checkpoint import load_checkpoint_and_tokenizer
from codegpt.eval.humaneval import first_problems
from codegpt.eval.likelihood import canonical_likelihood
from codegpt.model import GPT, ModelConfig

from test_generate import make_checkpoint, make_tokenizer


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("cut")
    tok = make_tokenizer(root)
    folder, _ = make_checkpoint(root / "ckpt", 400, tokenizer=tok, block_size=2048, moved=True)
    return load_checkpoint_and_tokenizer(folder, tok)


def test_a_prompt_keeps_its_last_tokens_at_a_token_boundary(loaded):
    tok = loaded.tokenizer
    prompt = first_problems(1)["HumanEval/0"]["prompt"]
    n = len(tok.encode(prompt).ids)
    assert last_tokens(tok, prompt, n) == prompt and last_tokens(tok, prompt, n + 5) == prompt
    for keep in (1, 10, n // 2):
        short = last_tokens(tok, prompt, keep)
        assert prompt.endswith(short) and short != prompt
        assert tok.encode(short).ids == tok.encode(prompt).ids[-keep:]


def test_cutting_is_scored_on_the_same_solutions(loaded):
    problems = first_problems(4)
    figures = cut_costs(loaded.model, loaded.tokenizer, problems, [100_000, 32])
    whole = canonical_likelihood(loaded.model, loaded.tokenizer, problems, progress=False)
    uncut, cut = figures["rows"]
    assert uncut["prompts_cut"] == 0 and cut["prompts_cut"] == 4
    for row in (uncut, cut):
        assert row["bits_per_byte_whole"] == pytest.approx(whole["canonical_bits_per_byte"])
    assert uncut["bits_per_byte_cut"] == pytest.approx(uncut["bits_per_byte_whole"])
    assert cut["bits_per_byte_cut"] != pytest.approx(cut["bits_per_byte_whole"])
    assert cut["cut_problems_bits_per_byte_whole"] == pytest.approx(cut["bits_per_byte_whole"])


def test_a_model_whose_context_cuts_the_whole_prompt_too_is_refused(loaded):
    short = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=64, vocab_size=400))
    with pytest.raises(SystemExit, match=r"context \(64 tokens\) does not hold the longest"):
        cut_costs(short, loaded.tokenizer, first_problems(4), [32])
