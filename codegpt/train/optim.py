"""The optimizers and the lr schedule: AdamW with GPT-3's settings and weight decay on weight
matrices only, or Muon on the blocks' weight matrices beside AdamW on the rest.

``ScheduledOptimizer`` is what the trainer uses: built from the ``optim`` section, it is the
one place a run's lr is set (``set_lr``, before every update).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from codegpt.train.config import OptimSection
from codegpt.train.schedule import Schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of Linear layers; never biases, LayerNorms or embeddings.

    The output head is tied to the token embedding, so it counts as an embedding (no decay).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight) for m in model.modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in embeddings
    }
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, fused: bool = False,
                    params: list[nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (default: all of the model's), decay on weight matrices only."""
    kwargs = {"fused": True} if fused else {}
    groups = param_groups(model, weight_decay)
    if params is not None:
        keep = {id(p) for p in params}
        groups = [{**g, "params": [p for p in g["params"] if id(p) in keep]} for g in groups]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the transformer blocks (attention and MLP projections): what
    Muon orthogonalises. Embeddings, the head, gains and biases are not among them."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("optim.name=muon needs a codegpt GPT (its transformer blocks)")
    return [p for p in blocks.parameters() if p.requires_grad and p.ndim == 2]


def build_optimizers(model: nn.Module, optim: OptimSection) -> list[torch.optim.Optimizer]:
    """The run's optimizers, each group's lr its peak: [AdamW], or [Muon, AdamW] for
    optim.name=muon (Muon on ``muon_params``, AdamW on every other parameter)."""
    betas = (optim.beta1, optim.beta2)
    if optim.name == "adamw":
        return [build_optimizer(model, optim.lr, betas, optim.eps, optim.weight_decay,
                                optim.fused)]
    hidden = muon_params(model)
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    muon = torch.optim.Muon(hidden, lr=optim.muon_lr, weight_decay=optim.muon_weight_decay,
                            momentum=optim.muon_momentum, adjust_lr_fn=optim.muon_adjust_lr)
    return [muon, build_optimizer(model, optim.lr, betas, optim.eps, optim.weight_decay,
                                  optim.fused, params=rest)]


class ScheduledOptimizer:
    """A run's optimizers and their lr schedule, all from the ``optim`` section (the schedule's
    length is ``max_steps``, run.max_steps).

    The lr is set in one place: ``set_lr`` before every update, to the schedule's lr of that
    update (by the step, or under a time budget by the step and the clock), times each group's
    share of optim.lr (Muon's groups: muon_lr / lr). Nothing else moves it, so a resumed run's
    lr is the schedule's as configured now, never the saved optimizer's.

    ``optimizers`` are the torch optimizers (AdamW, or Muon and AdamW), the accelerate-wrapped
    ones after ``prepare``; their state is saved and loaded by the checkpoint manager."""

    def __init__(self, model: nn.Module, optim: OptimSection, max_steps: int):
        self.schedule = Schedule(optim, max_steps)
        self.optimizers = build_optimizers(model, optim)
        # each group's peak over optim.lr's; no update runs with the lr given at construction
        self.scales = [[group["lr"] / optim.lr for group in o.param_groups]
                       for o in self.optimizers]

    def prepare(self, accelerator, model: nn.Module) -> nn.Module:
        """Hand the model and the optimizers to accelerate, which wraps them (under FSDP it
        shards the parameters and points the optimizers at the shards); returns the model."""
        model, *self.optimizers = accelerator.prepare(model, *self.optimizers)
        return model

    def set_lr(self, step: int, time_fraction: float | None = None) -> float:
        """Set the lr of update ``step`` (1-based) in every parameter group and return the
        schedule's (AdamW's) lr; ``time_fraction``: the spent share of the time budget, None
        without one."""
        lr = self.schedule.lr(step, time_fraction)
        for optimizer, scales in zip(self.optimizers, self.scales):
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
        return lr

    def step(self) -> None:
        """Apply the update of the gradients accumulated so far, then clear them."""
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def schedule_state(self, step: int) -> dict:
        """The schedule's state after ``step`` updates, as ``scheduler.pt`` holds it."""
        return self.schedule.state_dict(step, sum(len(o.param_groups) for o in self.optimizers))
