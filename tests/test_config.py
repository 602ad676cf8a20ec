import pytest

from codegpt.config import ConfigError
from codegpt.config import load_config
from codegpt.train.config import TrainConfig


def load_train_config(path, overrides=()):
    return load_config(TrainConfig, path, overrides)

from conftest import SMOKE


def test_smoke_config_loads_with_named_size():
    cfg = load_train_config(SMOKE)
    assert cfg.model.n_layer == 2 and cfg.model.d_model == 128
    assert cfg.optim.beta2 == 0.95 and cfg.optim.weight_decay == 0.1


def test_any_field_can_be_overridden():
    cfg = load_train_config(SMOKE, ["optim.lr=1e-4", "model.n_layer=3", "run.compile=true",
                                    "model.size=mini", "out_dir=/tmp/x"])
    assert cfg.optim.lr == 1e-4
    assert cfg.model.n_layer == 3 and cfg.model.d_model == 256  # size first, then the override
    assert cfg.run.compile is True and cfg.out_dir == "/tmp/x"


def test_named_config_resolves_without_path():
    assert load_train_config("smoke").run.max_steps == load_train_config(SMOKE).run.max_steps


@pytest.mark.parametrize("override, closest", [
    ("optim.lr_max=1", "optim.lr"),
    ("optim.warmup=3", "optim.warmup_steps"),
    ("modle.n_layer=3", "model.n_layer"),
    ("run.max_step=3", "run.max_steps"),
])
def test_unknown_key_names_the_closest_valid_key(override, closest):
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
        load_train_config(SMOKE, [override])


@pytest.mark.parametrize("override, words", [
    ("model.n_layer=two", "expects an integer"),
    ("run.compile=maybe", "true/false"),
    ("optim.lr=fast", "expects a number"),
    ("run.precision=fp8", "run.precision"),
    ("model.size=gpt3-125", "did you mean 'gpt3-125m'"),
    ("batch.micro_batch_size=0", "must be >= 1"),
    ("noequals", "section.field=value"),
])
def test_bad_values_are_clear_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        load_train_config(SMOKE, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_train_config("configs/train/nope.yaml")


def test_config_yaml_has_no_base_60_numbers():
    """YAML 1.1 reads 1:30 as 90 and 4:00:00 as 14400; in a config they stay what was written
    (times, ratios), and every other number reads as before."""
    from codegpt.config import load_yaml
    assert load_yaml("{t: 4:00:00, m: 1:30, f: 1:30.5, n: -2:05}") == \
        {"t": "4:00:00", "m": "1:30", "f": "1:30.5", "n": "-2:05"}
    assert load_yaml("[12, -3, 0x1f, 1_000, 1.5, 6.0e-4, .inf, true, null, '4:00']") == \
        [12, -3, 31, 1000, 1.5, 6e-4, float("inf"), True, None, "4:00"]
