"""AdamW with GPT-3's settings, weight decay on weight matrices only, and the lr schedule.

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
                    weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             **kwargs)


class ScheduledOptimizer:
    """A run's AdamW and its lr schedule, both from the ``optim`` section (the schedule's length
    is ``max_steps``, run.max_steps).

    The lr is set in one place: ``set_lr`` before every update, to the schedule's lr of that
    update (by the step, or under a time budget by the step and the clock). Nothing else moves
    it, so a resumed run's lr is the schedule's as configured now, never the saved optimizer's.

    ``optimizer`` is the torch optimizer, the accelerate-wrapped one after ``prepare``; its
    state is saved and loaded by the checkpoint manager."""

    def __init__(self, model: nn.Module, optim: OptimSection, max_steps: int):
        self.schedule = Schedule(optim, max_steps)
        # torch wants an lr at construction; no update runs with it, set_lr sets each one's
        self.optimizer = build_optimizer(model, 0.0, (optim.beta1, optim.beta2), optim.eps,
                                         optim.weight_decay, optim.fused)

    def prepare(self, accelerator, model: nn.Module) -> nn.Module:
        """Hand the model and the optimizer to accelerate, which wraps both (under FSDP it
        shards the parameters and points the optimizer at the shards); returns the model."""
        model, self.optimizer = accelerator.prepare(model, self.optimizer)
        return model

    def set_lr(self, step: int, time_fraction: float | None = None) -> float:
        """Set the lr of update ``step`` (1-based) in every parameter group and return it;
        ``time_fraction``: the spent share of the time budget, None without one."""
        lr = self.schedule.lr(step, time_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """Apply the update of the gradients accumulated so far, then clear them."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def schedule_state(self, step: int) -> dict:
        """The schedule's state after ``step`` updates, as ``scheduler.pt`` holds it."""
        return self.schedule.state_dict(step, len(self.optimizer.param_groups))
