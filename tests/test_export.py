"""Export to a Hugging Face folder (GPT-2, Llama, Qwen3): same logits, same greedy tokens,
offline loading; options no transformers class has are refused by name."""


import pytest
import torch

from architectures import OPTIONS
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


# option sets and the transformers class each exports to
EXPORTS = {
    "gpt3 untied": ({"tie_embeddings": False}, "GPT2LMHeadModel"),
    "gpt3 wider MLP": ({"mlp_hidden": 48, "norm_eps": 1e-6}, "GPT2LMHeadModel"),
    "llama": (OPTIONS["llama"], "LlamaForCausalLM"),
    "llama tied, biases": ({**OPTIONS["llama"], "bias": True, "tie_embeddings": True,
                           "rope_theta": 500.0}, "LlamaForCausalLM"),
    "qwen3": ({**OPTIONS["llama"], "qk_norm": True, "zero_init_proj": True},
              "Qwen3ForCausalLM"),
}


@pytest.mark.parametrize("options,arch", EXPORTS.values(), ids=EXPORTS.keys())
def test_each_architecture_exports_to_its_transformers_class_with_our_logits(
        exported, tmp_path, options, arch):
    tok_dir, tok, _, _ = exported
    folder, model = make_checkpoint(tmp_path / "ckpt", tok.get_vocab_size(), seed=2,
                                    moved=True, **options)
    out = export_hf(folder, tok_dir, tmp_path / "hf")
    hf, info = load_hf(out)
    assert type(hf).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tied = hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert tied == model.config.tie_embeddings
    x = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-4, rtol=0)
    ours = generate(model, tok, PROMPTS[:2], n=1, max_new_tokens=12, temperature=0, stop=(),
                    ignore_eot=True, heal=False)
    for prompt, [c] in zip(PROMPTS[:2], ours):
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
        hf.generation_config.eos_token_id = None  # it may pick end-of-text, and not stop there
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=12, pad_token_id=0)
        assert theirs[0, ids.shape[1]:].tolist() == c.token_ids


REFUSED = {
    "relu2": ({"mlp": "relu2"}, "model.mlp=relu2"),
    "rmsnorm with learned positions": ({"norm": "rmsnorm"}, "model.norm=rmsnorm"),
    "qk_norm with learned positions": ({"qk_norm": True}, "model.qk_norm=True"),
    "rotary with LayerNorm": ({"positions": "rotary", "mlp": "swiglu"}, "model.norm=layernorm"),
    "rotary with GELU": ({"positions": "rotary", "norm": "rmsnorm"}, "model.mlp=gelu"),
    "softcap": ({**OPTIONS["llama"], "logit_softcap": 30.0}, "model.logit_softcap"),
    "qk_norm with biases": ({**OPTIONS["llama"], "qk_norm": True, "bias": True}, "model.bias"),
}


@pytest.mark.parametrize("options,named", REFUSED.values(), ids=REFUSED.keys())
def test_an_option_no_transformers_class_has_is_refused_by_name(exported, tmp_path, options,
                                                                 named):
    tok_dir, tok, _, _ = exported
    folder, _ = make_checkpoint(tmp_path / "ckpt", tok.get_vocab_size(), **options)
    with pytest.raises(ExportError, match=named.replace(".", r"\.")):
        export_hf(folder, tok_dir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
