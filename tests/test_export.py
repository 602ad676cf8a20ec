"""Export to a Hugging Face GPT-2 folder: same logits, same greedy tokens, offline loading."""


import pytest
import torch

from codegpt.cli import main
from codegpt.export import ExportError, export_hf
from codegpt.eval.generate import generate
from codegpt.tokenizer.bpe import EOT, load_tokenizer
from test_generate import PROMPTS, make_checkpoint, make_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok_dir = make_tokenizer(root)
    tok = load_tokenizer(tok_dir)
    # bias-free, with a vocabulary that is not a multiple of 64: padded rows must be dropped
    folder, model = make_checkpoint(root / "ckpt", tok.get_vocab_size(), seed=1, bias=False)
    out = export_hf(folder, tok_dir, root / "hf")
    return tok_dir, tok, model, out


def load_hf(out):
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, local_files_only=True)
    return hf.float().eval(), info


def test_exported_model_loads_offline_with_no_missing_weights(exported):
    _, tok, model, out = exported
    hf, info = load_hf(out)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.vocab_size == tok.get_vocab_size() < model.wte.weight.shape[0]
    assert hf.config.n_positions == model.config.block_size
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tok.eos_token == EOT and hf_tok.bos_token == EOT and hf_tok.eos_token_id == 0
    for p in PROMPTS:
        assert hf_tok(p)["input_ids"] == tok.encode(p, add_special_tokens=False).ids
        assert hf_tok.decode(hf_tok(p)["input_ids"]) == p


def test_logits_match_ours(exported):
    _, _, model, out = exported
    hf, _ = load_hf(out)
    torch.manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (3, model.config.block_size))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_greedy_generation_matches_hf_generate(exported):
    _, tok, model, out = exported
    hf, _ = load_hf(out)
    ours = generate(model, tok, PROMPTS, n=1, max_new_tokens=20, temperature=0, stop=(),
                    ignore_eot=True, heal=False)  # HF's generate has no token healing
    for prompt, [c] in zip(PROMPTS, ours):
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=20, min_new_tokens=20, pad_token_id=0)
        assert theirs[0, ids.shape[1]:].tolist() == c.token_ids


def test_sparse_model_is_refused_and_cli_reports_errors(exported, tmp_path, capsys):
    tok_dir, tok, _, _ = exported
    folder, _ = make_checkpoint(tmp_path / "ckpt", tok.get_vocab_size(), sparse_attention=True,
                                local_window=8)
    with pytest.raises(ExportError, match="sparse attention"):
        export_hf(folder, tok_dir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    argv = ["export", "--checkpoint", str(folder), "--tokenizer", str(tok_dir),
            "--out", str(tmp_path / "hf")]
    assert main(argv) == 2 and "sparse attention" in capsys.readouterr().err
    argv[2] = str(tmp_path / "nope")
    assert main(argv) == 2 and "does not exist" in capsys.readouterr().err


def test_exported_model_infills_like_codegpt_sample(exported):
    """The exported folder's tokenizer knows the FIM tokens as special tokens: the PSM prompt
    written as text gives the ids codegpt builds, and greedy generation the same middle."""
    from codegpt.eval.generate import fim_prompt_ids, infill
    from codegpt.tokenizer.bpe import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX

    _, tok, model, out = exported
    hf, _ = load_hf(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    specials = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)
    assert set(specials) <= set(hf_tok.all_special_tokens)
    assert [hf_tok.convert_tokens_to_ids(t) for t in specials] == \
        [tok.token_to_id(t) for t in specials]
    pairs = [("def add(a, b):\n    ", "\n    return c\n"), ("import os\n\n", "\nprint(x)\n")]
    ours = infill(model, tok, pairs, n=1, max_new_tokens=12, temperature=0)
    for (prefix, suffix), [c] in zip(pairs, ours):
        text = f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"
        ids = hf_tok(text)["input_ids"]
        assert ids == fim_prompt_ids(tok, prefix, suffix, False, model.config.block_size, 12)
        x = torch.tensor([ids])
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=12, eos_token_id=hf_tok.eos_token_id,
                             pad_token_id=hf_tok.eos_token_id)[0, len(ids):].tolist()
        if hf_tok.eos_token_id in theirs:
            theirs = theirs[:theirs.index(hf_tok.eos_token_id)]
        assert theirs == c.token_ids
        assert hf_tok.decode(theirs, skip_special_tokens=True) == c.text
