"""Token healing: the prompt's last piece is backed off and regenerated."""

import pytest
import torch

from codegpt.eval.generate import generate
from codegpt.eval.healing import Healer, split_last_piece, token_bytes
from codegpt.eval.humaneval import load_problems
from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import TokenizerConfig, load_tokenizer, train_bpe

FUNCTION = 'def half(x):\n    """Return half of x."""\n    return x / 2\n\n\n'
PROMPT = 'def half(x):\n    """Return half of x."""\n'


@pytest.fixture(scope="module")
def stdlib_tok_dir(tmp_path_factory):
    from test_generate import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("heal"), vocab_size=800)


@pytest.fixture(scope="module")
def stdlib_tok(stdlib_tok_dir):
    return load_tokenizer(stdlib_tok_dir)


def test_the_prompt_without_its_last_piece_is_a_prefix_of_what_training_sees(stdlib_tok):
    """Unhealed, a HumanEval prompt's tokens are not a prefix of the tokens of prompt +
    solution (the line break after the docstring joins the body's indentation in training);
    without its last piece, every prompt's tokens are, and the piece starts the rest."""
    tok = stdlib_tok
    problems = load_problems()
    unhealed_prefix = 0
    for p in problems.values():
        full = tok.encode(p["prompt"] + p["canonical_solution"]).ids
        ids = tok.encode(p["prompt"]).ids
        unhealed_prefix += full[: len(ids)] == ids
        head, tail = split_last_piece(tok, p["prompt"])
        assert head + tail == p["prompt"] and tail
        head_ids = tok.encode(head).ids
        assert full[: len(head_ids)] == head_ids, p["task_id"]
        rest = tok.decode(full[len(head_ids):])
        assert rest.startswith(tail)
    assert unhealed_prefix < len(problems) / 4  # the defect healing is for


def test_split_last_piece_edge_cases(stdlib_tok):
    assert split_last_piece(stdlib_tok, "") == ("", "")
    head, tail = split_last_piece(stdlib_tok, "import os\n")
    assert head + tail == "import os\n" and tail.endswith("\n")
    assert split_last_piece(stdlib_tok, "x")[1] == "x"


def test_allowed_tokens_are_exactly_those_that_keep_to_the_healed_text(stdlib_tok):
    healer = Healer(stdlib_tok)
    vocab = token_bytes(stdlib_tok)
    for rest in (b'"""\n', b"\n", b"    ", b"(self"):
        mask = healer.allowed(rest).tolist()
        for i, b in enumerate(vocab):
            ok = b is not None and b != b"" and (b.startswith(rest) or rest.startswith(b))
            assert mask[i] == ok
        assert any(mask)
    eot = stdlib_tok.token_to_id("<|endoftext|>")
    assert not healer.allowed(b"\n")[eot]  # a special token never heals
    one = [i for i, b in enumerate(vocab) if b == b"\n"][0]
    assert healer.advance(b"\n    ", one) == b"    "
    assert healer.advance(b"\n", one) == b""


@pytest.fixture(scope="module")
def overfit():
    """A tokenizer and a model that learned one function: in training the docstring's closing
    quotes, line break and indentation are one token."""
    tok = train_bpe([FUNCTION] * 20, TokenizerConfig(vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, d_model=64, block_size=64,
                            vocab_size=tok.get_vocab_size()))
    ids = torch.tensor(tok.encode(FUNCTION * 3).ids[:65])[None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok, model.eval()


def test_healing_lets_the_model_continue_as_it_learned(overfit):
    tok, model = overfit
    body = "    return x / 2\n"
    full = tok.encode(FUNCTION).ids
    assert tok.encode(PROMPT).ids != full[: len(tok.encode(PROMPT).ids)]  # the boundary defect
    kw = dict(n=1, max_new_tokens=12, temperature=0, stop=("\ndef",))
    [[healed]] = generate(model, tok, [PROMPT], **kw)
    [[plain]] = generate(model, tok, [PROMPT], heal=False, **kw)
    assert healed.text.startswith(body), healed.text
    assert not plain.text.startswith(body), plain.text  # unhealed, it cannot get there
    assert healed.mean_logp > plain.mean_logp
    # the completion's tokens and score count only tokens holding a completion byte: the first
    # one straddles the prompt's end (the healed quotes, line break and indentation)
    [[c]] = generate(model, tok, [PROMPT], n=1, max_new_tokens=4, temperature=0, stop=())
    decoded = tok.decode(c.token_ids)
    assert c.finish_reason == "length" and c.text.startswith("    return")
    assert decoded.endswith(c.text) and 0 < len(decoded) - len(c.text) <= len('."""\n')


def test_healing_is_on_by_default_and_keeps_sampling_reproducible(overfit):
    tok, model = overfit
    kw = dict(n=3, max_new_tokens=8, temperature=0.8, top_p=0.95, stop=())
    a = generate(model, tok, [PROMPT, "def half(x):\n"], batch_size=6, **kw)
    b = generate(model, tok, [PROMPT], batch_size=1, **kw)
    assert [c.text for c in a[0]] == [c.text for c in b[0]]
    for c in a[0]:
        assert not c.text.startswith('"""')  # the healed text is the prompt's, never repeated


def test_special_token_text_in_a_healed_prompt_is_text(stdlib_tok_dir, stdlib_tok, monkeypatch):
    """Healing splits and encodes a prompt holding <|endoftext|> / <|fim_prefix|> as text: the
    head's ids are the token shards' ids of it (a prefix of the whole prompt's), with no special
    id, and the model is given exactly those."""
    from codegpt.eval import generate as generate_module
    from codegpt.tokenizer.bpe import SPECIAL_TOKENS
    from test_generate import SPECIAL_TEXTS, shard_ids

    tok = stdlib_tok
    specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    prompts = [*SPECIAL_TEXTS, '<|fim_prefix|>def f():\n    """<|endoftext|>"""\n']
    heads = []
    for prompt in prompts:
        head, tail = split_last_piece(tok, prompt)
        assert head + tail == prompt and tail
        ids, whole = tok.encode(head).ids, shard_ids(stdlib_tok_dir, prompt)
        assert ids == shard_ids(stdlib_tok_dir, head) == whole[: len(ids)], prompt
        assert not specials & set(ids) and tok.decode(whole[len(ids):]).startswith(tail)
        heads.append(ids)
    seen, prefill = [], generate_module.prefill

    def watched(model, idx, lengths, cache):
        seen.extend(idx[i, : int(n)].tolist() for i, n in enumerate(lengths))
        return prefill(model, idx, lengths, cache)

    monkeypatch.setattr(generate_module, "prefill", watched)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=64,
                            vocab_size=tok.get_vocab_size())).eval()
    out = generate(model, tok, prompts, n=1, max_new_tokens=4, temperature=0, stop=())
    assert sorted(seen) == sorted(ids or [tok.token_to_id("<|endoftext|>")] for ids in heads)
    assert all(len(c) == 1 for c in out)
