"""Export a checkpoint as a Hugging Face model folder: GPT-2, Llama or Qwen3, whichever
``transformers`` architecture computes what the model computes.

- GPT-3's options (learned positions, LayerNorm, GELU) are GPT-2's architecture: the weights map
  one to one, GPT-2's ``Conv1D`` storing the transpose of ``nn.Linear``'s [out, in] matrix;
  biases we do not have are written as zeros.
- Rotary positions + RMSNorm + SwiGLU are Llama's (``LlamaForCausalLM``): the fused q/k/v and
  gate/up projections are split; our rotary layout is Llama's rotate-half one, so no
  permutation is needed. With QK-norm (and no biases) they are Qwen3's (``Qwen3ForCausalLM``).
- Any other mix, banded sparse attention and a logit soft-cap have no transformers class and
  are refused with the option named, rather than exported wrong.

Padded embedding rows are sliced off to the real vocabulary. The folder loads offline with
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from codegpt.checkpoint import load_checkpoint_and_tokenizer
from codegpt.errors import ExportError
from codegpt.model import GPT, ModelConfig
from codegpt.outputs import check_output, writing_aside
from codegpt.tokenizer.bpe import EOT, SPECIAL_TOKENS, tokenizer_file

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LAYERNORMS = ("ln_1", "ln_2")


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers class that computes what a model of ``cfg`` computes; ExportError
    naming the option that no transformers class has."""
    if cfg.sparse_attention:
        raise ExportError("model.sparse_attention=true (banded sparse attention) has no "
                          "transformers equivalent: the exported model would compute something "
                          "else. Only dense models can be exported.")
    if cfg.logit_softcap:
        raise ExportError(f"model.logit_softcap={cfg.logit_softcap}: no transformers class of "
                          "this architecture soft-caps its logits (Gemma 2's does, but differs "
                          "in every other part), so the exported model would compute something "
                          "else")
    if cfg.positions == "learned":  # GPT-2's family
        for key, want in (("norm", "layernorm"), ("mlp", "gelu"), ("qk_norm", False)):
            if getattr(cfg, key) != want:
                raise ExportError(f"model.{key}={getattr(cfg, key)}: learned positions export "
                                  f"as GPT-2, which has {key}={want}; no transformers class has "
                                  "both")
        return "GPT2LMHeadModel"
    for key, want in (("norm", "rmsnorm"), ("mlp", "swiglu")):
        if getattr(cfg, key) != want:
            raise ExportError(f"model.{key}={getattr(cfg, key)}: rotary positions export as "
                              f"Llama (or Qwen3 with QK-norm), which have {key}={want}; no "
                              "transformers class has both")
    if cfg.qk_norm:
        if cfg.bias:
            raise ExportError("model.bias=true with model.qk_norm=true: QK-norm exports as "
                              "Qwen3, whose MLP has no biases")
        return "Qwen3ForCausalLM"
    return "LlamaForCausalLM"


def hf_config(cfg: ModelConfig, eot_id: int = 0):
    """The transformers config of ``hf_architecture(cfg)``."""
    import transformers  # heavy, and only needed to export: imported on use

    arch = hf_architecture(cfg)
    ids = dict(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
               tie_word_embeddings=cfg.tie_embeddings, architectures=[arch])
    if arch == "GPT2LMHeadModel":
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model,
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.ffn_hidden,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True, **ids)
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head, head_dim=cfg.head_dim, hidden_act="silu",
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=cfg.bias, attention_dropout=0.0, **ids)
    if arch == "Qwen3ForCausalLM":
        return transformers.Qwen3Config(use_sliding_window=False, **common)
    return transformers.LlamaConfig(mlp_bias=cfg.bias, **common)


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under the names of ``hf_architecture``'s class (a tied lm_head left out,
    as transformers saves it)."""
    cfg = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    sd["wte.weight"] = sd["wte.weight"][: cfg.vocab_size]
    sd["lm_head.weight"] = sd["lm_head.weight"][: cfg.vocab_size]
    gpt2 = hf_architecture(cfg) == "GPT2LMHeadModel"
    out = gpt2_state_dict(cfg, sd) if gpt2 else llama_state_dict(cfg, sd)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def gpt2_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    d = cfg.d_model

    def bias(key: str, size: int) -> torch.Tensor:  # GPT-2 always has biases: zeros if we have none
        return sd[key] if key in sd else torch.zeros(size)

    out = {"transformer.wte.weight": sd["wte.weight"],
           "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"],
           "transformer.ln_f.bias": bias("ln_f.bias", d)}
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for name in LAYERNORMS:
            out[dst + name + ".weight"] = sd[src + name + ".weight"]
            out[dst + name + ".bias"] = bias(src + name + ".bias", d)
        for name in LINEARS:
            w = sd[src + name + ".weight"]  # nn.Linear: [out, in]
            out[dst + name + ".weight"] = w.t()  # Conv1D: [in, out]
            out[dst + name + ".bias"] = bias(src + name + ".bias", w.shape[0])
    return out


def llama_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Llama's (and Qwen3's) names; the fused projections split into their parts."""
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        parts = {"attn.c_attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                 "attn.c_proj": ["self_attn.o_proj"],
                 "mlp.c_fc": ["mlp.gate_proj", "mlp.up_proj"], "mlp.c_proj": ["mlp.down_proj"]}
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                if f"{src}{ours}.{kind}" in sd:
                    chunks = sd[f"{src}{ours}.{kind}"].chunk(len(theirs), dim=0)
                    out.update({f"{dst}{name}.{kind}": c for name, c in zip(theirs, chunks)})
        out[dst + "input_layernorm.weight"] = sd[src + "ln_1.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "ln_2.weight"]
        if cfg.qk_norm:
            out[dst + "self_attn.q_norm.weight"] = sd[src + "attn.q_norm.weight"]
            out[dst + "self_attn.k_norm.weight"] = sd[src + "attn.k_norm.weight"]
    return out


def export_hf(checkpoint_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face model folder (config.json, model.safetensors, generation_config.json,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json) to ``out_dir``, atomically."""
    check_output(out_dir, "export")  # refused before the model is loaded
    # the tokenizer bundled is the checkpoint's own (by its recorded hash) or an error
    loaded = load_checkpoint_and_tokenizer(checkpoint_dir, tokenizer_dir)
    model, cfg, tok = loaded.model, loaded.config, loaded.tokenizer
    try:
        hf_architecture(cfg)
    except ExportError as e:
        raise ExportError(f"checkpoint {checkpoint_dir} cannot be exported: {e}") from None
    tok_file = tokenizer_file(tokenizer_dir)
    eot_id = tok.token_to_id(EOT)

    with writing_aside(out_dir, "export") as tmp:  # swapped in whole when complete
        config = hf_config(cfg, eot_id)
        config.save_pretrained(tmp)
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id},
            indent=2) + "\n")
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": EOT, "bos_token": EOT, "unk_token": EOT, "pad_token": EOT,
            "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
            "clean_up_tokenization_spaces": False, "add_prefix_space": False,
            "model_max_length": cfg.block_size,
        }, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps({
            "eos_token": EOT, "bos_token": EOT, "unk_token": EOT, "pad_token": EOT,
            "additional_special_tokens": list(SPECIAL_TOKENS[1:])}, indent=2) + "\n")
    out = Path(out_dir)
    return out
