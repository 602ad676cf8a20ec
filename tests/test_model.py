
import pytest
import torch

from architectures import OPTIONS, perturb
from codegpt.config import CONFIG_ROOT, from_dict, read_yaml
from codegpt.errors import ConfigError
from codegpt.model import GPT, CausalSelfAttention, ModelConfig, RMSNorm, banded_causal_mask

# GPT-3 table 2.1 (Brown et al. 2020), with GPT-2's 50257-token vocabulary and 2048 context.
GPT3_PARAMS = {
    "gpt3-125m": 125e6, "gpt3-350m": 350e6, "gpt3-760m": 760e6, "gpt3-1.3b": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9,
}


def load_size(name: str, **kw) -> ModelConfig:
    raw = read_yaml(CONFIG_ROOT / "model" / f"{name}.yaml")
    return from_dict(ModelConfig, {**raw, **kw})


@pytest.mark.parametrize("name", sorted(GPT3_PARAMS))
def test_named_sizes_match_the_gpt3_table(name):
    cfg = load_size(name, vocab_size=50257)
    with torch.device("meta"):
        model = GPT(cfg)
    count = model.num_params()
    assert abs(count - GPT3_PARAMS[name]) / GPT3_PARAMS[name] < 0.03, count


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, d_model=32, n_head=4, block_size=32, vocab_size=100)
    return ModelConfig(**{**base, **kw})


def test_vocab_is_padded_but_padded_ids_never_get_logits():
    model = GPT(tiny(vocab_size=100))
    assert model.wte.weight.shape[0] == 128
    logits, _ = model(torch.randint(0, 100, (2, 8)))
    assert logits.shape == (2, 8, 100)
    # greedy / sampled ids always come from the real vocabulary
    assert int(logits.argmax(-1).max()) < 100


def test_head_is_tied_and_init_follows_gpt2():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, d_model=256, n_head=4, block_size=64, vocab_size=5000)
    model = GPT(cfg)
    assert model.lm_head.weight is model.wte.weight
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / (2 * 8) ** 0.5
    assert model.blocks[3].attn.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[3].mlp.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert torch.all(model.blocks[0].attn.c_attn.bias == 0)
    assert torch.all(model.blocks[0].ln_1.weight == 1)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 100, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 100
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_banded_layers_alternate_and_only_see_the_window():
    cfg = tiny(n_layer=4, sparse_attention=True, local_window=4)
    assert [cfg.is_sparse_layer(i) for i in range(4)] == [False, True, False, True]
    mask = banded_causal_mask(6, 2)
    assert mask.tolist()[5] == [False, False, False, False, True, True]
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg, layer=1).eval()
    x = torch.randn(1, 16, 32)
    x2 = x.clone()
    x2[0, 0] += 10.0  # position 0 is outside the window of positions >= 4
    a, b = attn(x), attn(x2)
    torch.testing.assert_close(a[:, 4:], b[:, 4:])
    assert not torch.allclose(a[:, :4], b[:, :4])
    dense = CausalSelfAttention(cfg, layer=0).eval()
    assert not torch.allclose(dense(x)[:, 4:], dense(x2)[:, 4:])


CACHED = {**OPTIONS, "long band": {"sparse_attention": True, "local_window": 12}}


@pytest.mark.parametrize("options", CACHED.values(), ids=CACHED.keys())
def test_kv_cache_matches_the_full_forward(options):
    """Chunks and single tokens through the cache give the training forward's logits, for
    every architecture option, and for bands shorter and longer than the chunks; ``head_pos``
    picks one position per row."""
    torch.manual_seed(0)
    model = perturb(GPT(tiny(**options))).eval()
    x = torch.randint(0, 100, (3, 20))
    with torch.no_grad():
        full, _ = model(x)
    cache = model.new_kv_cache(3)
    parts = [model.forward_cached(x[:, :7], cache, 0), model.forward_cached(x[:, 7:10], cache, 7)]
    parts += [model.forward_cached(x[:, t:t + 1], cache, t) for t in range(10, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    last = model.forward_cached(x[:, :9], model.new_kv_cache(3, 9), 0, torch.tensor([8, 2, 5]))
    torch.testing.assert_close(last, full[[0, 1, 2], [8, 2, 5]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        model.forward_cached(x[:, :3], model.new_kv_cache(3, 8), 6)


def test_sparse_model_trains_forward_and_backward():
    model = GPT(tiny(sparse_attention=True, local_window=8))
    x = torch.randint(0, 100, (2, 32))
    _, loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss)


def test_overfits_one_fixed_batch_to_near_zero_loss():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=2, d_model=64, block_size=32))
    batch = torch.randint(0, 100, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_too_long_input_and_bad_config_are_clear_errors():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(ModelConfig())


def test_dropout_acts_only_in_training_mode():
    model = GPT(tiny(dropout=0.2))
    x = torch.randint(0, 100, (2, 16))
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_options_build_the_modules_they_name():
    cfg = tiny(positions="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False,
               tie_embeddings=False, logit_softcap=5.0)
    model = GPT(cfg)
    assert not any("wpe" in name for name, _ in model.named_parameters())  # no learned positions
    block = model.blocks[0]
    assert isinstance(block.ln_1, RMSNorm) and isinstance(model.ln_f, RMSNorm)
    assert isinstance(block.attn.q_norm, RMSNorm)
    x = torch.randn(3, 5, 32)  # the same function as torch's own, faster on CPU
    torch.testing.assert_close(block.ln_1(x), torch.nn.functional.rms_norm(
        x, (32,), block.ln_1.weight, cfg.norm_eps))
    assert block.attn.q_norm.weight.shape == (cfg.head_dim,)
    # SwiGLU: gate and up projections of 8/3 d rounded up to 64, about 4d's parameters
    assert cfg.ffn_hidden == 128 and block.mlp.c_fc.weight.shape == (256, 32)
    assert tiny(mlp="swiglu", mlp_hidden=40).ffn_hidden == 40
    assert tiny(mlp="relu2").ffn_hidden == 4 * 32
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight is not model.wte.weight


def test_zero_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init_proj=True))
    for block in model.blocks:
        assert torch.all(block.attn.c_proj.weight == 0) and torch.all(block.mlp.c_proj.weight == 0)
    x = torch.randint(0, 100, (2, 8))
    emb = model.wpe.add(model.wte(x), torch.arange(8))
    torch.testing.assert_close(model(x)[0], model.head(model.ln_f(emb)))
    _, loss = model(x, x)
    loss.backward()  # the zero matrices still get gradients, so they move
    assert model.blocks[0].mlp.c_proj.weight.grad.abs().sum() > 0


def test_softcap_bounds_the_logits_and_padded_ids_stay_out():
    torch.manual_seed(0)
    model = perturb(GPT(tiny(logit_softcap=2.0)), scale=1.0)
    logits, loss = model(torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8)))
    assert logits.abs().max() <= 2.0 and torch.isfinite(loss)
    padded = model.padded_logits(model.trunk(torch.randint(0, 100, (1, 4))))
    assert padded.shape[-1] == 128 and torch.all(padded[..., 100:] == float("-inf"))


def test_rotary_attention_depends_on_relative_positions_only():
    """The same tokens at positions shifted by 9 get the same logits (a query-key score sees
    only their distance), and the order of the tokens still matters: in one layer, the last
    token's logits would not change under a reordering of the tokens before it without the
    rotation."""
    torch.manual_seed(0)
    model = perturb(GPT(tiny(positions="rotary", block_size=64, n_layer=1))).eval()
    x = torch.randint(0, 100, (1, 12))
    reordered = torch.cat([x[:, :-1].flip(1), x[:, -1:]], 1)
    with torch.no_grad():
        at0 = model(x)[0]
        rotation = model.wpe.rotation
        model.wpe.rotation = lambda pos: rotation(pos + 9)
        at9 = model(x)[0]
        model.wpe.rotation = lambda pos: None
        unrotated = model(x)[0], model(reordered)[0]
        del model.wpe.rotation
        rotated = model(reordered)[0]
    torch.testing.assert_close(at9, at0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unrotated[1][0, -1], unrotated[0][0, -1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(rotated[0, -1], at0[0, -1], atol=1e-3)


def test_bad_option_values_are_clear_errors():
    with pytest.raises(ConfigError, match="model.positions"):
        from_dict(ModelConfig, {"positions": "alibi"}, prefix="model.")
    with pytest.raises(ConfigError, match="model.mlp"):
        from_dict(ModelConfig, {"mlp": "geglu"}, prefix="model.")
    with pytest.raises(ConfigError, match="model.logit_softcap"):
        from_dict(ModelConfig, {"logit_softcap": -1.0}, prefix="model.")
    with pytest.raises(ValueError, match="even head size"):
        ModelConfig(d_model=12, n_head=4, positions="rotary")


def test_presets_beside_gpt3_s_keep_its_sizes_and_name_their_architecture():
    """gpt3-* presets are GPT-3's architecture exactly (every option at its default); llama-*
    presets have GPT-3's sizes with Llama's architecture (they export as Llama); speedrun-*
    presets use every speedrun option."""
    from codegpt.export import hf_architecture

    defaults = ModelConfig()
    options = ("positions", "norm", "mlp", "qk_norm", "bias", "tie_embeddings",
               "zero_init_proj", "logit_softcap", "sparse_attention")
    for name in GPT3_PARAMS:
        cfg = load_size(name, vocab_size=50257)
        assert all(getattr(cfg, k) == getattr(defaults, k) for k in options), name
        llama = name.replace("gpt3-", "llama-")
        if (CONFIG_ROOT / "model" / f"{llama}.yaml").is_file():
            lcfg = load_size(llama, vocab_size=50257)
            assert hf_architecture(lcfg) == "LlamaForCausalLM"
            with torch.device("meta"):
                count = GPT(lcfg).num_params()
            assert abs(count - GPT3_PARAMS[name]) / GPT3_PARAMS[name] < 0.03, (llama, count)
    for name in ("speedrun-125m", "speedrun-350m"):
        cfg = load_size(name, vocab_size=50257)
        assert cfg.qk_norm and cfg.zero_init_proj and cfg.logit_softcap and cfg.mlp == "relu2"
