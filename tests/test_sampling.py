"""Sampling functions: top-k and top-p together against a brute-force reference."""

import pytest
import torch

from codegpt.eval.sampling import pick_tokens


def reference_top_k_top_p(logits: torch.Tensor, temperature: float, top_k: int, top_p: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One row [V]: the tokens that may be drawn (most likely first) and their probabilities,
    by the definition: sort, keep the top k, renormalise over them, then keep a token while the
    mass before it is below top_p (as transformers' TopK then TopP warpers)."""
    vals, order = torch.sort(logits.double() / temperature, descending=True)
    probs = torch.softmax(vals[:top_k], -1)
    keep = probs.cumsum(-1) - probs < top_p
    probs = probs[keep]
    return order[:top_k][keep], probs / probs.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("top_k,top_p", [(5, 0.5), (10, 0.8), (20, 0.9), (40, 0.95)])
def test_top_k_then_top_p_cuts_the_renormalised_top_k(temperature, top_k, top_p):
    """The nucleus is taken on the top-k distribution renormalised, not on the full one: every
    row can draw exactly the reference's tokens, each over its own share of the uniforms."""
    torch.manual_seed(0)
    logits = torch.randn(300, 64) * 2.0
    draws = 200  # per row, in one batch: a row's pick depends on its own logits and uniform
    u = torch.rand(logits.shape[0] * draws)
    drawn = pick_tokens(logits.repeat_interleave(draws, 0), temperature, top_p, top_k, u)
    refs = [reference_top_k_top_p(row, temperature, top_k, top_p) for row in logits]
    for row, (row_drawn, (tokens, _)) in enumerate(zip(drawn.view(-1, draws).tolist(), refs)):
        assert set(row_drawn) <= set(tokens.tolist()), row
    # a uniform in the middle of each kept token's share of [0, 1) draws that token: every
    # token of the reference can be drawn, in the reference's order
    mids = torch.cat([(probs.cumsum(-1) - probs / 2).float() for _, probs in refs])
    rows = torch.repeat_interleave(torch.tensor([len(tokens) for tokens, _ in refs]))
    picks = pick_tokens(logits[rows], temperature, top_p, top_k, mids)
    assert picks.tolist() == torch.cat([tokens for tokens, _ in refs]).tolist()
