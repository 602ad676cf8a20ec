import pytest
import torch

from codegpt.model import GPT, ModelConfig
from codegpt.train.config import OptimSection
from codegpt.train.optim import ScheduledOptimizer, build_optimizer, param_groups
from codegpt.train.schedule import lr_at, lr_at_time


def test_weight_decay_only_on_linear_weight_matrices():
    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=4, block_size=16, vocab_size=50))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {f"blocks.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias",
            "blocks.0.attn.c_attn.bias", "blocks.1.ln_2.weight"} <= skipped
    # every parameter exactly once (the tied head is the embedding)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_gpt3_adam_settings_and_fused_flag():
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, block_size=16, vocab_size=50))
    opt = build_optimizer(model, 6e-4, (0.9, 0.95), 1e-8, 0.1, fused=True)
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 and g["fused"]
    x = torch.randint(0, 50, (2, 16))
    model(x, x)[1].backward()
    opt.step()


def test_the_scheduled_optimizer_sets_each_update_s_lr_in_every_group():
    """ScheduledOptimizer is built from the optim section; set_lr puts the schedule's lr of an
    update (by the step, or by the step and the clock) into every group, and step() applies the
    update and clears the gradients."""
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, block_size=16, vocab_size=50))
    section = OptimSection(lr=1e-3, beta1=0.8, warmup_steps=4, min_lr_ratio=0.1, fused=False)
    optim = ScheduledOptimizer(model, section, max_steps=20)
    assert optim.optimizers[0].param_groups[0]["betas"] == (0.8, 0.95)
    assert optim.set_lr(2) == lr_at(2, 1e-3, 4, 20, 0.1)
    assert {g["lr"] for g in optim.optimizers[0].param_groups} == {lr_at(2, 1e-3, 4, 20, 0.1)}
    assert optim.set_lr(10, 0.9) == lr_at_time(10, 0.9, 1e-3, 4, 20, 0.1)
    before = model.wte.weight.detach().clone()
    x = torch.randint(0, 50, (2, 16))
    model(x, x)[1].backward()
    optim.step()
    assert not torch.equal(before, model.wte.weight)
    assert all(p.grad is None for p in model.parameters())
    state = optim.schedule_state(10)
    assert state["last_epoch"] == 10 and len(state["base_lrs"]) == 2


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    """optim.name=muon: torch's Muon on the blocks' weight matrices, AdamW on embeddings, the
    (untied) head, gains and biases; every parameter in exactly one optimizer; each group's lr
    follows the schedule at its own peak."""
    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=4, block_size=16, vocab_size=50,
                            mlp="swiglu", qk_norm=True, tie_embeddings=False))
    names = {id(p): n for n, p in model.named_parameters()}
    section = OptimSection(name="muon", lr=1e-3, muon_lr=0.02, warmup_steps=4, fused=False)
    optim = ScheduledOptimizer(model, section, max_steps=20)
    muon, adamw = optim.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {f"blocks.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"wte.weight", "lm_head.weight", "wpe.weight", "ln_f.weight",
            "blocks.0.attn.q_norm.weight", "blocks.1.mlp.c_fc.bias"} <= in_adamw
    assert not in_muon & in_adamw
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))
    lr = optim.set_lr(3)
    assert lr == lr_at(3, 1e-3, 4, 20, 0.1)
    assert muon.param_groups[0]["lr"] == pytest.approx(lr * 20)
    assert {g["lr"] for g in adamw.param_groups} == {lr}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 50, (2, 16))
    model(x, x)[1].backward()
    optim.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert len(optim.schedule_state(3)["base_lrs"]) == 3


def test_muon_orthogonalises_the_update():
    """One Muon step from zero momentum moves a matrix by lr times an orthogonalised gradient:
    its leading singular values are all about one (Newton-Schulz), where the gradient's spread
    widely."""
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, block_size=16, vocab_size=50))
    section = OptimSection(name="muon", lr=1e-3, muon_lr=0.01, warmup_steps=0, fused=False)
    optim = ScheduledOptimizer(model, section, max_steps=10)
    w = model.blocks[0].attn.c_proj.weight
    before = w.detach().clone()
    x = torch.randint(0, 50, (8, 16))
    model(x, x)[1].backward()
    g = torch.linalg.svdvals(w.grad)[:16]
    assert g.max() / g.min() > 3
    optim.set_lr(1)
    optim.step()
    s = torch.linalg.svdvals((before - w.detach()) / 0.01)[:16]
    assert 0.6 < s.min() and s.max() < 1.3
