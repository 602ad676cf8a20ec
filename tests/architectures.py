"""The model options, one at a time and in the combinations the presets use, for tests that
must hold for every architecture (cached decoding, export, resume, FSDP)."""

import torch

OPTIONS = {
    "gpt3": {},
    "sparse": {"sparse_attention": True, "local_window": 4},
    "rotary": {"positions": "rotary"},
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu": {"mlp": "swiglu"},
    "relu2": {"mlp": "relu2"},
    "qk_norm": {"qk_norm": True},
    "no_bias": {"bias": False},
    "untied": {"tie_embeddings": False},
    "zero_init": {"zero_init_proj": True},
    "softcap": {"logit_softcap": 3.0},
    "llama": {"positions": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
              "tie_embeddings": False},
    "speedrun": {"positions": "rotary", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True,
                 "bias": False, "tie_embeddings": False, "zero_init_proj": True,
                 "logit_softcap": 15.0, "sparse_attention": True, "local_window": 5},
}


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its initial value (zero-initialised projections, unit gains, zero
    biases), so that each part of the model shows in its outputs."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
