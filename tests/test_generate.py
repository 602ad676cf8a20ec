"""Generation: KV cache against the full forward, sampling reproducibility, stop strings.

These tests compare token by token with references, so they sample without token healing
(``heal=False``); tests/test_healing.py covers healing, which is on by default."""

import calendar
import colorsys
import fnmatch
import functools
import inspect
import json
import math
import shlex
import string
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from architectures import OPTIONS, perturb

from codegpt.checkpoint import load_checkpoint_model
from codegpt.cli import main
from codegpt.config import yaml_text
from codegpt.eval import generate as generate_module
from codegpt.eval.decode import decode_step, prefill, prompt_groups
from codegpt.eval.config import DEFAULT_STOP
from codegpt.eval.generate import Completion, encode_prompts, prompts_cut
from codegpt.eval.generate import generate as generate_healed
from codegpt.eval.sampling import nucleus_mask, pick_tokens
from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import (EOT, SPECIAL_TOKENS, TokenizerConfig, fast_encoder,
                                   load_tokenizer, tokenizer_hash, train_bpe, train_tokenizer)
from codegpt.train import checkpoint as ckpt
from codegpt.train.config import DataSection, TrainConfig

PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Point:\n    def __init__(self"]

generate = functools.partial(generate_healed, heal=False)


def make_tokenizer(root: Path, vocab_size: int = 400, other: bool = False) -> Path:
    """A small BPE tokenizer trained in-test on a few standard-library modules; ``other``: on
    other modules, so another tokenizer of the same size (another hash, other merges)."""
    data = root / "data"
    data.mkdir(parents=True)
    modules = [calendar, fnmatch, shlex] if other else [colorsys, string, textwrap]
    docs = [{"id": str(i), "repo_name": f"repo{i}/x", "text": inspect.getsource(m)}
            for i, m in enumerate(modules)]
    pq.write_table(pa.Table.from_pylist(docs), data / "00000.parquet")
    return train_tokenizer(TokenizerConfig(data_dir=str(data), out_dir=str(root / "tok"),
                                           vocab_size=vocab_size, sample_mb=1)).parent


def make_checkpoint(root: Path, vocab_size: int, seed: int = 0, tokenizer: Path | None = None,
                    step: int = 1, fim: tuple[float, float] | None = None, moved: bool = False,
                    **model_kw) -> tuple[Path, GPT]:
    """A random (untrained) model saved as a training checkpoint would be; with ``tokenizer``,
    recording that tokenizer's hash as the trainer does (without, as an older checkpoint);
    ``fim``: its config says it trained with (data.fim_rate, data.fim_spm_rate); ``moved``:
    every weight moved off its initial value (``architectures.perturb``)."""
    torch.manual_seed(seed)
    kw = dict(n_layer=2, n_head=4, d_model=32, block_size=64, vocab_size=vocab_size)
    data = DataSection(fim_rate=fim[0], fim_spm_rate=fim[1]) if fim else DataSection()
    cfg = TrainConfig(model=ModelConfig(**{**kw, **model_kw}), data=data,
                      tokenizer=str(tokenizer or "") if fim else "")
    model = GPT(cfg.model)
    with torch.no_grad():  # untrained norms are all ones / zeros: make them matter
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    if moved:
        perturb(model, seed=seed)
    folder = ckpt.save_checkpoint(
        root, step, model_state=model.state_dict(), optim_state={"state": {}, "param_groups": []},
        sched_state={}, trainer_state={"step": step, "data": {}, "tokens_seen": 0, "world_size": 1},
        config_yaml=yaml_text(cfg), rank=0,
        barrier=lambda: None, keep_last=3, tied=cfg.model.tie_embeddings,
        tokenizer_hash=tokenizer_hash(tokenizer) if tokenizer else None)
    return folder, model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tok_dir = make_tokenizer(root)
    tok = load_tokenizer(tok_dir)
    folder, model = make_checkpoint(root / "ckpt", tok.get_vocab_size())
    return tok_dir, tok, folder, model


def test_load_checkpoint_model_restores_the_weights(setup):
    _, tok, folder, model = setup
    loaded, cfg = load_checkpoint_model(folder)
    assert cfg == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.wte.weight
    x = torch.randint(0, cfg.vocab_size, (2, 10))
    assert torch.equal(loaded(x)[0], model(x)[0])


def decode_rows(model, prompts, rows, gen, groups, drop_at=None, keep=None):
    """Logits of decoding gen [B, S] after the prompts (lists of ids, any lengths) with
    prefill + decode_step; rows[r] is row r's prompt. At step ``drop_at`` only the
    rows in ``keep`` go on (groups then come from ``keep``)."""
    lengths = torch.tensor([len(p) for p in prompts])
    idx = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(p)
    prefix = model.new_kv_cache(len(prompts), idx.shape[1])
    first = prefill(model, idx, lengths, prefix)
    cache = model.new_kv_cache(len(rows), gen.shape[1])
    row_len = lengths[rows]
    out, live = [first[rows]], torch.arange(len(rows))
    for t in range(gen.shape[1] - 1):
        if t == drop_at:
            live = torch.tensor(keep)
            cache = [(k[live], v[live]) for k, v in cache]
            if groups is None:
                prefix = [(k[live], v[live]) for k, v in prefix]
            groups = None if groups is None else prompt_groups([rows[i] for i in keep])
        step = decode_step(model, gen[live, t], prefix, groups, cache, t, row_len[live])
        out.append(torch.full_like(out[0], float("nan")).index_copy(0, live, step))
    return torch.stack(out, 1)  # [B, S, V]: logits before gen[:, t]


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_decoding_against_prompts_matches_the_full_forward(options):
    """Shared prompts (n samples each) and one prompt per row, of different lengths, right-
    padded: each row's logits are those of the full forward of its own prompt + tokens, also
    after rows are dropped mid-way, for every architecture option."""
    torch.manual_seed(0)
    model = perturb(GPT(ModelConfig(n_layer=2, n_head=4, d_model=32, block_size=32,
                                    vocab_size=100, **options))).eval()
    prompts = [torch.randint(0, 100, (n,)).tolist() for n in (7, 3, 5)]
    gen = torch.randint(0, 100, (5, 10))

    def reference(rows):
        with torch.no_grad():
            return [model(torch.tensor([prompts[p] + gen[r].tolist()]))[0][0, len(prompts[p]) - 1:-1]
                    for r, p in enumerate(rows)]

    rows = [0, 0, 0, 1, 2]  # grouped: three samples of prompt 0, one each of prompts 1 and 2
    got = decode_rows(model, prompts, rows, gen, prompt_groups(rows), drop_at=6, keep=[1, 3, 4])
    for r, want in enumerate(reference(rows)):
        n = 7 if r in (0, 2) else 10  # rows 0 and 2 left the batch after step 6
        torch.testing.assert_close(got[r, :n], want[:n], atol=1e-5, rtol=1e-5)
    rows = [0, 1, 2]  # aligned: one row per prompt
    got = decode_rows(model, prompts, rows, gen[:3], None, drop_at=4, keep=[0, 2])
    for r, want in enumerate(reference(rows)):
        n = 5 if r == 1 else 10
        torch.testing.assert_close(got[r, :n], want[:n], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        decode_step(model, gen[:, 0], model.new_kv_cache(5, 7), None, model.new_kv_cache(5, 2), 2)


def greedy_reference(model: GPT, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding with the training forward, no cache."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids]))[0][0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
    return out


@pytest.mark.parametrize("sparse", [False, True])
def test_greedy_with_cache_equals_greedy_without(setup, sparse):
    _, tok, _, model = setup
    if sparse:  # a window much shorter than prompt + completion: the band matters
        torch.manual_seed(1)
        model = GPT(ModelConfig(**{**vars(model.config), "sparse_attention": True,
                                   "local_window": 5})).eval()
    res = generate(model, tok, PROMPTS, n=1, max_new_tokens=12, temperature=0, stop=(),
                   ignore_eot=True)
    for prompt, [c] in zip(PROMPTS, res):
        ids = tok.encode(prompt, add_special_tokens=False).ids
        assert c.token_ids == greedy_reference(model, ids, 12)
        assert c.finish_reason == "length" and c.text == tok.decode(c.token_ids)
        # mean logp is the model's own log-softmax over the kept tokens
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids + c.token_ids]))
        lp = torch.log_softmax(logits[0, len(ids) - 1:-1], -1)
        expect = lp.gather(1, torch.tensor(c.token_ids)[:, None]).mean().item()
        assert c.mean_logp == pytest.approx(expect, abs=1e-5)


def test_too_long_prompts_keep_their_end_and_room_for_the_completion(setup, caplog):
    """A long prompt keeps its end and leaves the completion max_new_tokens, or half the
    context when that is more; one warning per call, with a count."""
    _, tok, _, model = setup
    long = "x = 1\n" * 100  # far more than block_size = 64 tokens
    prompts = [long, "y", long + "z = 2\n"]
    kw = dict(temperature=0, stop=(), ignore_eot=True)
    with caplog.at_level("WARNING", logger="codegpt.eval.generate"):
        out = generate(model, tok, prompts, max_new_tokens=10, **kw)
    assert [r.getMessage() for r in caplog.records] == [
        "2 of 3 prompts were longer than 54 tokens; kept their last 54 tokens to leave 10 for "
        "the completion (model.block_size=64, max_new_tokens=10)"]
    assert all(len(cs[0].token_ids) == 10 for cs in out)
    caplog.clear()
    with caplog.at_level("WARNING", logger="codegpt.eval.generate"):
        out = generate(model, tok, prompts, max_new_tokens=100, **kw)
    assert "kept their last 32 tokens to leave 32" in caplog.records[0].getMessage()
    assert [len(cs[0].token_ids) for cs in out] == [32, 63, 32]  # "y": the rest of 64


def test_samples_do_not_depend_on_batch_size_or_other_prompts(setup):
    _, tok, _, model = setup
    kw = dict(n=6, max_new_tokens=10, temperature=1.0, top_p=0.95, stop=(), seed=3)
    big = generate(model, tok, PROMPTS, batch_size=8, **kw)
    small = generate(model, tok, PROMPTS[1:2], batch_size=1, **kw)
    assert [c.token_ids for c in big[1]] == [c.token_ids for c in small[0]]
    assert len({tuple(c.token_ids) for c in big[1]}) > 1  # the samples differ from each other
    other_seed = generate(model, tok, PROMPTS[1:2], batch_size=8, **{**kw, "seed": 4})
    assert [c.token_ids for c in other_seed[0]] != [c.token_ids for c in small[0]]
    # one seed per prompt: prompts of different lengths in one batch, each its own stream
    per_prompt = generate(model, tok, PROMPTS, batch_size=18, **{**kw, "seed": [5, 4, 6]})
    assert [c.token_ids for c in per_prompt[1]] == [c.token_ids for c in other_seed[0]]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        generate(model, tok, PROMPTS, **{**kw, "seed": [1, 2]})


def sorted_nucleus(probs, top_p):
    """Reference top-p set: sort the whole vocabulary, keep while the mass before is < top_p."""
    vals, order = torch.sort(probs, -1, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    return keep.scatter_(1, order, vals.cumsum(-1) - vals < top_p)


@pytest.mark.parametrize("peak,sizes", [(15.0, (1, 256)), (0.0, (5000 - 1000, 5000)),
                                        (2.0, (256, 5000 - 1000))])
def test_nucleus_shortlists_find_what_a_full_sort_finds(peak, sizes):
    """Narrow nuclei (the most likely shortlist), flat ones (the least likely shortlist, as from
    random weights) and ones in between (a full sort) all give the sorted definition."""
    torch.manual_seed(0)
    logits = torch.randn(64, 5000) * (0.05 if peak == 0 else 1.0)
    logits[:, :40] += peak * torch.rand(64, 40)
    probs = torch.softmax(logits, -1)
    for top_p in (0.95, 0.5, 0.99):
        mask = nucleus_mask(probs, top_p)
        assert torch.equal(mask, sorted_nucleus(probs, top_p))
        assert torch.equal(nucleus_mask(probs[5:6], top_p), mask[5:6])  # alone = in a batch
    size = nucleus_mask(probs, 0.95).sum(-1)
    assert sizes[0] <= size.min() and size.max() < sizes[1]


def test_sampling_draws_the_truncated_distribution():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -100.0]])
    u = torch.rand(40000)

    def freq(t, p, k):
        picks = pick_tokens(logits.expand(40000, -1), t, p, k, u)
        return torch.bincount(picks, minlength=5).float() / 40000

    probs = torch.softmax(logits[0], -1)
    torch.testing.assert_close(freq(1.0, 1.0, 0), probs, atol=0.01, rtol=0)
    assert freq(1.0, 1.0, 0)[4] == 0  # an underflowed probability is never drawn
    nucleus = probs * torch.tensor([0, 1, 1, 0, 0])  # 0.66 + 0.24 >= 0.85
    torch.testing.assert_close(freq(1.0, 0.85, 0), nucleus / nucleus.sum(), atol=0.01, rtol=0)
    cold = torch.softmax(logits[0] / 0.5, -1) * torch.tensor([1, 1, 1, 1, 0])
    torch.testing.assert_close(freq(0.5, 1.0, 4), cold / cold.sum(), atol=0.01, rtol=0)


def test_bfloat16_sampling(setup):
    _, tok, folder, _ = setup
    model, _ = load_checkpoint_model(folder, dtype="bfloat16")
    assert model.wte.weight.dtype == torch.bfloat16
    out = generate(model, tok, PROMPTS[:2], n=3, max_new_tokens=6, temperature=0.8, stop=())
    assert all(len(c.token_ids) <= 6 and math.isfinite(c.mean_logp) for cs in out for c in cs)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_checkpoint_model(folder, dtype="fp8")


def test_top_k_top_p_and_greedy_selection():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -5.0]]).log_softmax(-1)
    assert pick_tokens(logits, 0, 1.0, 0, None).tolist() == [1]
    u = torch.linspace(0, 0.999, 200)
    many = logits.expand(200, -1)
    assert set(pick_tokens(many, 1.0, 1.0, 1, u).tolist()) == {1}        # top-k 1
    assert set(pick_tokens(many, 1.0, 1.0, 2, u).tolist()) == {1, 2}     # top-k 2
    assert set(pick_tokens(many, 1.0, 0.5, 0, u).tolist()) == {1}        # p(1) = 0.64 > 0.5
    assert set(pick_tokens(many, 1.0, 0.85, 0, u).tolist()) == {1, 2}    # 0.64 + 0.24 > 0.85
    assert set(pick_tokens(many, 1.0, 0.9, 0, u).tolist()) == {1, 2, 3}  # ... < 0.9
    assert set(pick_tokens(many, 1.0, 1.0, 0, u).tolist()) == {0, 1, 2, 3}  # p(4) ~ 2e-4


def scripted(monkeypatch, cfg: ModelConfig, scripts: list[list[int]],
             peaks: list[list[float]] | None = None) -> GPT:
    """A model whose next token is scripted per prompt (in order of the batch), to test
    stopping: generate's prefill and decode_step are replaced. The row's identity rides in the
    KV caches, so it survives finished rows being dropped from the batch. The scripted token's
    logit is peaks[row][step] (10 without ``peaks``), every other token's -10."""

    def logits(who: list[int], step: int) -> torch.Tensor:
        out = torch.full((len(who), cfg.vocab_size), -10.0)
        for b, r in enumerate(who):
            i = min(step, len(scripts[r]) - 1)
            out[b, scripts[r][i]] = peaks[r][i] if peaks else 10.0
        return out

    def fake_prefill(model, idx, lengths, cache):
        cache[0][0][:, 0, 0, 0] = torch.arange(idx.shape[0])  # the prompts' own keys
        return logits(list(range(idx.shape[0])), 0)

    def fake_decode_step(model, tokens, prefix, groups, cache, step, prefix_len=None):
        tag = cache[0][0]
        if step == 0:  # from the prompts' keys: rows that ended at once are gone by now
            who = prefix[0][0][:, 0, 0, 0] if groups is None else torch.cat(
                [prefix[0][0][p, 0, 0, 0].expand(b - a) for p, a, b in groups])
            tag[:, 0, 0, 0] = who
        return logits(tag[:, 0, 0, 0].long().tolist(), step + 1)

    monkeypatch.setattr(generate_module, "prefill", fake_prefill)
    monkeypatch.setattr(generate_module, "decode_step", fake_decode_step)
    return GPT(cfg).eval()


def test_each_sequence_stops_on_its_own(setup, monkeypatch):
    _, tok, _, _ = setup
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    eot = tok.token_to_id(EOT)
    x = ids("x = 1")
    scripts = [x + ids("\ndef f") + x * 5,      # stops at "\ndef"
               x + [eot] + x * 5,                # stops at <|endoftext|>
               x * 20]                           # runs to the limit
    cfg = ModelConfig(n_layer=1, n_head=1, d_model=8, block_size=64, vocab_size=tok.get_vocab_size())
    model = scripted(monkeypatch, cfg, scripts)
    # three prompts of the same token length share one batch
    out = generate(model, tok, ["a", "b", "c"], n=1, max_new_tokens=3 * len(x), temperature=0)
    a, b, c = (r[0] for r in out)
    assert a.finish_reason == "stop" and a.text == "x = 1" and a.token_ids == x
    assert b.finish_reason == "eot" and b.text == "x = 1" and b.token_ids == x
    assert c.finish_reason == "length" and c.text == "x = 1" * 3
    assert all(isinstance(r, Completion) for r in (a, b, c))
    assert "\ndef" in DEFAULT_STOP


def scripted_logp(peak: float, vocab_size: int) -> float:
    """log p of a ``scripted`` token whose logit is ``peak``."""
    logits = torch.full((vocab_size,), -10.0)
    logits[0] = peak
    return torch.log_softmax(logits, -1)[0].item()


def test_mean_logp_scores_the_token_that_ends_a_completion(setup, monkeypatch):
    """Codex's reranking scores the token that ends a completion: <|endoftext|>, or the first
    token that reaches into a stop string (not the ones after it). A completion that ends at
    once scores the probability of ending there, not 0.0, so it does not outrank real ones."""
    _, tok, _, _ = setup
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    eot, V = tok.token_to_id(EOT), tok.get_vocab_size()
    x, stop = ids("x = 1"), ids("\ndef f")
    scripts = [[eot], stop + x, x + [eot], x + stop + x]
    peaks = [[-8.0], [-7.0] + [9.0] * (len(stop) + len(x) - 1),  # ending at once is unlikely
             [5.0] * len(x) + [0.0], [3.0 + i for i in range(len(x))] + [-2.0] + [9.0] * 20]
    cfg = ModelConfig(n_layer=1, n_head=1, d_model=8, block_size=64, vocab_size=V)
    model = scripted(monkeypatch, cfg, scripts, peaks)
    out = generate(model, tok, ["a", "b", "c", "d"], n=1, max_new_tokens=20, temperature=0,
                   stop=("\ndef",))
    a, b, c, d = (r[0] for r in out)
    assert [(r.finish_reason, r.text, r.token_ids) for r in (a, b, c, d)] == [
        ("eot", "", []), ("stop", "", []), ("eot", "x = 1", x), ("stop", "x = 1", x)]
    lp = [[scripted_logp(v, V) for v in row] for row in peaks]
    assert a.mean_logp == pytest.approx(lp[0][0], abs=1e-5)
    assert b.mean_logp == pytest.approx(lp[1][0], abs=1e-5)  # the stop's first token only
    assert c.mean_logp == pytest.approx(sum(lp[2][: len(x) + 1]) / (len(x) + 1), abs=1e-5)
    assert d.mean_logp == pytest.approx(sum(lp[3][: len(x) + 1]) / (len(x) + 1), abs=1e-5)
    # reranking (the highest mean_logp first) puts both real completions before the empty ones
    by_logp = sorted([a, b, c, d], key=lambda r: r.mean_logp, reverse=True)
    assert [r.text for r in by_logp][:2] == ["x = 1", "x = 1"]


def test_a_completion_without_tokens_scores_minus_infinity(setup):
    _, tok, _, model = setup
    [[c]] = generate(model, tok, PROMPTS[:1], max_new_tokens=0, temperature=0)
    assert (c.text, c.token_ids, c.finish_reason, c.mean_logp) == ("", [], "length", -math.inf)


def test_stop_strings_found_late_and_across_tokens(setup, monkeypatch):
    """Stops are looked for in the last few tokens only: a multi-token stop string (also a
    non-ASCII one, whose bytes span tokens) deep into a completion is still cut exactly."""
    _, tok, _, _ = setup
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    body = "    total = total + 1\n" * 12
    texts = [body + "\nprint(total)\n", body + "# é→ end", body + "return 1" + "\n    pass" * 8]
    cfg = ModelConfig(n_layer=1, n_head=1, d_model=8, block_size=512, vocab_size=tok.get_vocab_size())
    model = scripted(monkeypatch, cfg, [ids(t) for t in texts])
    assert len(ids("é→")) > 1
    assert len(ids(texts[2])) > max(len(ids(texts[0])), len(ids(texts[1])))
    out = generate(model, tok, ["a", "b", "c"], n=1, max_new_tokens=len(ids(texts[2])),
                   temperature=0, stop=("\nprint", "é→"))
    a, b, c = (r[0] for r in out)
    assert (a.finish_reason, a.text) == ("stop", body)
    assert (b.finish_reason, b.text) == ("stop", body + "# ")
    assert (c.finish_reason, c.text) == ("length", texts[2])


def test_cli_sample_and_clear_errors(setup, tmp_path, capsys):
    tok_dir, _, folder, _ = setup
    argv = ["sample", "--checkpoint", str(folder), "--tokenizer", str(tok_dir),
            "--prompt", "def f(x):", "--n", "2", "--max-new-tokens", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("--- sample") == 2
    assert main(argv[:2] + [str(tmp_path / "missing")] + argv[3:]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(argv[:4] + [str(tmp_path)] + argv[5:]) == 2
    assert "no tokenizer" in capsys.readouterr().err


GOLDEN = Path(__file__).parent / "data" / "generation_golden.json"
GOLDEN_CORPUS = [
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "import os\nimport sys\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
] * 3
GOLDEN_PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Point:\n    def __init__(self, x"]


def test_generation_matches_the_recorded_tokens():
    """The tokens (and mean logp) that generation gave when the golden file was recorded, for
    greedy, nucleus and top-k sampling at batch sizes 1 and 4: refactoring the model, the
    decoding or the sampling must not change a single token. A float64 model keeps the
    comparison free of rounding noise."""
    golden = json.loads(GOLDEN.read_text())
    tok = train_bpe(GOLDEN_CORPUS, TokenizerConfig(vocab_size=320, min_frequency=1))
    assert tok.get_vocab_size() == golden["vocab"]
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, d_model=32, block_size=64,
                            vocab_size=tok.get_vocab_size()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model = model.double().eval()
    for run in golden["runs"]:
        res = generate(model, tok, GOLDEN_PROMPTS, max_new_tokens=24, stop=(), seed=7,
                       **run["settings"])
        assert [[c.token_ids for c in cs] for cs in res] == run["token_ids"], run["settings"]
        for cs, want in zip(res, run["mean_logp"]):
            assert [c.mean_logp for c in cs] == pytest.approx(want, abs=1e-6), run["settings"]


# --- text that poses as special tokens ----------------------------------------------------------

SPECIAL_TEXTS = ['x = "<|endoftext|>"\n', "<|fim_prefix|>def f():\n    <|fim_suffix|>",
                 "<|endoftext|>", "a<|fim_middle|>b<|fim_pad|>\n<|endoftext|>def g():\n"]


def shard_ids(tok_dir: Path, text: str) -> list[int]:
    """The ids the token shards hold for ``text`` (``codegpt tokenize``'s engine)."""
    return fast_encoder(tok_dir).encode_ordinary(text)


def test_special_token_text_in_a_prompt_is_text(setup, monkeypatch):
    """A literal <|endoftext|> or <|fim_prefix|> in a prompt is encoded as the token shards
    encode it, never as a special id; generation still stops at <|endoftext|>."""
    tok_dir, tok, _, _ = setup
    specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    for text, ids in zip(SPECIAL_TEXTS, encode_prompts(tok, SPECIAL_TEXTS, 64, 0)):
        assert ids == shard_ids(tok_dir, text) and not specials & set(ids), text
        assert tok.decode(ids) == text
    eot = tok.token_to_id(EOT)
    x = tok.encode("x = 1").ids
    cfg = ModelConfig(n_layer=1, n_head=1, d_model=8, block_size=64,
                      vocab_size=tok.get_vocab_size())
    model = scripted(monkeypatch, cfg, [x + [eot] + x * 5])
    seen, scripted_prefill = [], generate_module.prefill

    def prefill(model, idx, lengths, cache):  # what the model is given
        seen.append(idx[0, : int(lengths[0])].tolist())
        return scripted_prefill(model, idx, lengths, cache)

    monkeypatch.setattr(generate_module, "prefill", prefill)
    [[c]] = generate(model, tok, SPECIAL_TEXTS[3:], max_new_tokens=20, temperature=0, stop=())
    assert seen == [shard_ids(tok_dir, SPECIAL_TEXTS[3])]
    assert (c.finish_reason, c.text, c.token_ids) == ("eot", "x = 1", x)


# --- infilling ----------------------------------------------------------------------------------

def test_infill_prompts_are_laid_out_as_training_laid_out_fim(setup):
    """PSM: <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>; SPM: <|fim_prefix|>
    <|fim_suffix|> suffix <|fim_middle|> prefix; prefix and suffix encoded each on its own, a
    special token's text in them as text. Too long: the prefix keeps its end, the suffix its
    start."""
    from codegpt.eval.generate import fim_prompt_ids
    from codegpt.tokenizer.bpe import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

    _, tok, _, _ = setup
    pre, mid, suf = (tok.token_to_id(t) for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    prefix, suffix = "def f(x):\n    y = '<|fim_middle|>'\n", "\n    return y\n"
    assert fim_prompt_ids(tok, prefix, suffix, False, 512, 16) == \
        [pre, *enc(prefix), suf, *enc(suffix), mid]
    assert fim_prompt_ids(tok, prefix, suffix, True, 512, 16) == \
        [pre, suf, *enc(suffix), mid, *enc(prefix)]
    assert enc(prefix).count(mid) == 0
    long_pre, long_suf = "x = 1\n" * 200, "y = 2\n" * 200
    ids = fim_prompt_ids(tok, long_pre, long_suf, False, 64, 16)  # room: 64 - 16 - 3 = 45
    s, m = ids.index(suf), ids.index(mid)
    assert len(ids) == 48 and ids[1:s] == enc(long_pre)[-(s - 1):] and \
        ids[s + 1:m] == enc(long_suf)[:m - s - 1] and m - s - 1 >= 22


def test_infill_greedy_is_the_model_s_own_greedy_middle_and_ends_at_eot(setup, monkeypatch):
    from codegpt.eval.generate import fim_prompt_ids, infill

    _, tok, _, model = setup
    pairs = [("def f(x):\n    ", "\n    return y\n"), ("import os\n", "")]
    out = infill(model, tok, pairs, n=1, max_new_tokens=10, temperature=0)
    for (prefix, suffix), [c] in zip(pairs, out):
        ids = fim_prompt_ids(tok, prefix, suffix, False, model.config.block_size, 10)
        expect = greedy_reference(model, ids, 10)
        eot = tok.token_to_id(EOT)
        if eot in expect:
            expect = expect[:expect.index(eot)]
            assert c.finish_reason == "eot"
        else:
            assert c.finish_reason == "length"  # the limit cut the middle
        assert c.token_ids == expect and c.text == tok.decode(expect)
    # sampled middles are a function of (seed, i) and the pair, as completions are
    a = infill(model, tok, pairs, n=3, max_new_tokens=6, temperature=1.0, seed=5)
    b = infill(model, tok, pairs[:1], n=3, max_new_tokens=6, temperature=1.0, seed=5)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    # a middle ends at <|endoftext|>; the Codex stop strings do not apply to it
    x = tok.encode("x = 1\ndef g", add_special_tokens=False).ids
    cfg = ModelConfig(n_layer=1, n_head=1, d_model=8, block_size=64,
                      vocab_size=tok.get_vocab_size())
    scripted_model = scripted(monkeypatch, cfg, [x + [tok.token_to_id(EOT)] + x])
    [[c]] = infill(scripted_model, tok, [("a", "b")], n=1, max_new_tokens=40, temperature=0)
    assert c.finish_reason == "eot" and c.text == "x = 1\ndef g"


def test_cli_sample_infills_in_the_order_the_model_learned(setup, tmp_path, capsys):
    tok_dir, tok, folder, _ = setup
    argv = ["sample", "--checkpoint", str(folder), "--tokenizer", str(tok_dir),
            "--prompt", "def f(x):\\n    ", "--suffix", "\\n    return y\\n", "--escapes",
            "--n", "1", "--max-new-tokens", "4", "--temperature", "0"]
    assert main(argv) == 2  # a model that never learned FIM: said, unless an order is forced
    assert "was not trained to fill in the middle" in capsys.readouterr().err
    assert main([*argv, "--fim-mode", "psm"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 1 and out.startswith("--- sample 0") and \
        out.rstrip("\n").endswith("    return y")
    for spm_rate, asked, code in ((1.0, "auto", 0), (1.0, "psm", 2), (0.0, "spm", 2),
                                  (0.5, "spm", 0)):
        fim_folder, _ = make_checkpoint(tmp_path / f"fim{spm_rate}", tok.get_vocab_size(),
                                        tokenizer=tok_dir, fim=(0.5, spm_rate))
        argv[2] = str(fim_folder)
        assert main([*argv, "--fim-mode", asked]) == code, (spm_rate, asked)
        err = capsys.readouterr().err
        assert code == 0 or f"never saw {asked} order" in err


def test_prompts_cut_counts_the_prompts_kept_to_their_end(setup):
    """``prompts_cut`` (results.json's count) agrees with what ``encode_prompts`` feeds the
    model: a prompt longer than the context minus the completion's room keeps its last ids."""
    _, tok, _, _ = setup
    prompts = ["x = 1\n", "def f(a, b):\n    return a + b\n" * 8, ""]
    lengths = [len(tok.encode(p).ids) for p in prompts]
    block = 64
    for new in (0, 8, 32, 100):
        kept = encode_prompts(tok, prompts, block, new, warn=False)
        room = block - min(new, block // 2)
        assert [len(k) for k in kept] == [min(n, room) if n else 1 for n in lengths]
        assert prompts_cut(tok, prompts, block, new) == sum(n > room for n in lengths)
    assert prompts_cut(tok, prompts, 1024, 128) == 0 and prompts_cut(tok, prompts, 64, 32) == 1
