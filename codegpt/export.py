"""Export a checkpoint as a Hugging Face GPT-2 folder.

Our decoder is GPT-2's architecture (pre-LayerNorm, learned positions, tanh GELU, tied head),
so the weights map one to one: GPT-2's ``Conv1D`` stores a [in, out] matrix, the transpose of
``nn.Linear``'s, and the padded embedding rows are sliced off to the real vocabulary. Banded
sparse layers have no GPT-2 equivalent, so such models are refused rather than exported wrong.
The folder loads offline with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.
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


def hf_config(cfg: ModelConfig, eot_id: int = 0):
    from transformers import GPT2Config  # heavy, and only needed to export: imported on use

    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.d_model,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, scale_attn_weights=True, tie_word_embeddings=True,
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
        architectures=["GPT2LMHeadModel"])


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names (the tied lm_head left out, as HF saves it)."""
    cfg = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    d = cfg.d_model

    def bias(key: str, size: int) -> torch.Tensor:  # GPT-2 always has biases: zeros if we have none
        return sd[key] if key in sd else torch.zeros(size)

    out = {"transformer.wte.weight": sd["wte.weight"][: cfg.vocab_size],
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
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf(checkpoint_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a GPT-2 model folder (config.json, model.safetensors, generation_config.json,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json) to ``out_dir``, atomically."""
    check_output(out_dir, "export")  # refused before the model is loaded
    # the tokenizer bundled is the checkpoint's own (by its recorded hash) or an error
    loaded = load_checkpoint_and_tokenizer(checkpoint_dir, tokenizer_dir)
    model, cfg, tok = loaded.model, loaded.config, loaded.tokenizer
    if cfg.sparse_attention:
        raise ExportError(
            f"checkpoint {checkpoint_dir} uses banded sparse attention (model.sparse_attention: "
            "true), which GPT-2 cannot express: the exported model would compute something "
            "else. Only dense models can be exported.")
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
