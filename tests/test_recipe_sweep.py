"""The recipe search's budgets: each trial's quiet-machine throughput, with its own optimizer,
and equal wall time (each trial trains for its minutes, through ``codegpt train``)."""

import inspect
import json
import os
import string
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bench.recipe_sweep import cpu_throughput
from codegpt.config import load_config
from codegpt.tokenizer.bpe import TokenizerConfig, train_tokenizer
from codegpt.tokenizer.encode import TokenizeConfig, tokenize
from codegpt.train.config import TrainConfig

from conftest import REPO, SMOKE


@pytest.mark.parametrize("extra", [[], ["optim.name=muon", "model.positions=rotary",
                                        "model.norm=rmsnorm", "model.mlp=swiglu"]])
def test_a_trial_s_throughput_is_measured_with_its_own_model_and_optimizer(extra):
    cfg = load_config(TrainConfig, SMOKE, ["model.vocab_size=300", "batch.micro_batch_size=2",
                                           *extra])
    tokens_per_s, compile_s = cpu_throughput(cfg, steps=1, rounds=2)
    assert tokens_per_s > 0 and compile_s == 0.0


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A trained tokenizer and token shards of a few standard-library modules."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "data").mkdir()
    docs = [{"id": str(i), "repo_name": f"repo/{mod.__name__}", "text": inspect.getsource(mod)}
            for i, mod in enumerate([string, textwrap, json.decoder, json.encoder, inspect])]
    pq.write_table(pa.Table.from_pylist(docs), root / "data" / "00000.parquet")
    tok = train_tokenizer(TokenizerConfig(data_dir=str(root / "data"), out_dir=str(root / "tok"),
                                          vocab_size=400, sample_mb=5)).parent
    tokenize(TokenizeConfig(data_dir=str(root / "data"), tokenizer=str(tok),
                            out_dir=str(root / "tokens"), val_fraction=0.2,
                            tokens_per_shard=20_000))
    return tok, root / "tokens"


def test_equal_wall_time_trains_each_trial_for_its_minutes_and_scores_it(small_data, tmp_path):
    tok, tokens = small_data
    base = {"data_dir": str(tokens), "tokenizer": str(tok), "model.n_layer": 1,
            "model.d_model": 32, "model.n_head": 2, "model.block_size": 64,
            "batch.global_batch_tokens": 256, "batch.micro_batch_size": 4,
            "data.val_every": 5}
    trials = {"trials": [
        {"name": "gpt3", "config": str(SMOKE), "set": base},
        {"name": "rotary-muon", "config": str(SMOKE),
         "set": {**base, "model.positions": "rotary", "optim.name": "muon"}}]}
    (tmp_path / "trials.yaml").write_text(yaml.safe_dump(trials))
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, "-m", "bench.recipe_sweep", "--trials", str(tmp_path / "trials.yaml"),
           "--budget-minutes", "0.1", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["equal"] == "wall" and [t["name"] for t in report["trials"]] == [
        "gpt3", "rotary-muon"]
    for trial in report["trials"]:
        metrics = [json.loads(line) for line in
                   (tmp_path / "runs" / trial["name"] / "metrics.jsonl").read_text().splitlines()]
        rows = [m for m in metrics if "loss" in m]
        # trained until its 6 seconds ran out (the last update's row is logged just before the
        # budget's clock reads them spent), and no further than the update that spent them
        assert rows[-1]["elapsed_s"] > 5.5 and rows[-2]["elapsed_s"] < 6.0
        assert trial["steps"] == rows[-1]["step"] > 1
        assert trial["tokens"] == trial["steps"] * 256
        assert 0 < trial["canonical_bits_per_byte"] < 20 and trial["val_loss"] is not None
    assert report["trials"][1]["set"]["optim.name"] == "muon"
    # a finished trial is not trained again
    stamp = (tmp_path / "runs" / "gpt3" / "metrics.jsonl").stat().st_mtime_ns
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "runs" / "gpt3" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert len(json.loads(out.read_text())["trials"]) == 2
