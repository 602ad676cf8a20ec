import pytest

from architectures import OPTIONS
from codegpt.train.flops import flops_per_token, mfu, n_params, peak_flops
from codegpt.model import GPT, ModelConfig


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_analytic_param_count_matches_the_module(options):
    cfg = ModelConfig(n_layer=3, d_model=96, n_head=4, block_size=64, vocab_size=1000, **options)
    model = GPT(cfg)
    assert n_params(cfg, include_position=True) == model.num_params()
    assert n_params(cfg) == model.num_params(non_embedding=True)


def test_flops_per_token_formula():
    cfg = ModelConfig(n_layer=12, d_model=768, n_head=12, block_size=2048, vocab_size=50257)
    n = n_params(cfg)
    assert flops_per_token(cfg) == 6 * n + 12 * 12 * 768 * 2048
    assert flops_per_token(cfg, seq_len=1024) == 6 * n + 12 * 12 * 768 * 1024


def test_peak_table_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and peak_flops("Some CPU") is None
    assert mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, 1, None) is None
