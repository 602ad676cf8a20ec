"""The recipe search's budget: each trial's quiet-machine throughput, with its own optimizer."""

import pytest

from bench.recipe_sweep import cpu_throughput
from codegpt.config import load_config
from codegpt.train.config import TrainConfig

from conftest import SMOKE


@pytest.mark.parametrize("extra", [[], ["optim.name=muon", "model.positions=rotary",
                                        "model.norm=rmsnorm", "model.mlp=swiglu"]])
def test_a_trial_s_throughput_is_measured_with_its_own_model_and_optimizer(extra):
    cfg = load_config(TrainConfig, SMOKE, ["model.vocab_size=300", "batch.micro_batch_size=2",
                                           *extra])
    tokens_per_s, compile_s = cpu_throughput(cfg, steps=1, rounds=2)
    assert tokens_per_s > 0 and compile_s == 0.0
