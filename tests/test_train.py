"""End-to-end training runs through train.py, as a user launches them."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codegpt.checkpoint import list_checkpoints
from codegpt.train.metrics import read_metrics
from codegpt.config import load_config
from codegpt.train.config import TrainConfig
from codegpt.train.trainer import PREEMPTED_EXIT_CODE, NonFiniteLossError, Trainer

from conftest import REPO, SMOKE, kill_at_checkpoint, run_cli


def smoke_args(token_dir, run_dir, *extra):
    return [str(SMOKE), f"data_dir={token_dir}", f"out_dir={run_dir}", *extra]


def losses(run_dir, key="loss"):
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def check_ok(proc, code=0):
    assert proc.returncode == code, proc.stderr[-3000:]


# a slower model than smoke, so a kill lands reliably between step 10 and step 20
SLOW = ["model.n_layer=4", "model.d_model=256", "run.max_steps=20", "checkpoint.every=10",
        "data.val_every=0"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_losses(token_dir, tmp_path):
    straight = tmp_path / "straight"
    check_ok(run_cli(smoke_args(token_dir, straight, *SLOW)))

    killed = tmp_path / "killed"
    kill_at_checkpoint(smoke_args(token_dir, killed, *SLOW), killed)
    assert max(losses(killed)) < 20, "the kill came too late to test anything"
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["step_0000010"]

    check_ok(run_cli(smoke_args(token_dir, killed, *SLOW)))  # resume=auto
    a, b = losses(straight), losses(killed)
    assert sorted(b) == list(range(1, 21))
    assert a == b  # bit-identical floats, not approximately equal
    assert losses(straight, "grad_norm") == losses(killed, "grad_norm")
    assert losses(straight, "lr") == losses(killed, "lr")
    # and the last checkpoints are the same files: weights, optimizer (its betas a tuple
    # again after the load), schedule, and every RNG stream (Python's and numpy's seeded)
    last = Path("checkpoints") / "step_0000020"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng/rank_00000.pt"):
        assert (straight / last / name).read_bytes() == (killed / last / name).read_bytes(), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(token_dir, tmp_path):
    extra = ["run.max_steps=20", "checkpoint.every=10"]
    one = tmp_path / "one"
    check_ok(run_cli(smoke_args(token_dir, one, *extra)))
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    proc = run_cli(smoke_args(token_dir, two, *extra), launcher=torchrun)
    check_ok(proc)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    va, vb = losses(one, "val_loss"), losses(two, "val_loss")
    assert sorted(va) == sorted(vb) == [10, 20]
    for step in va:
        assert vb[step] == pytest.approx(va[step], rel=1e-5)
    state = json.loads((two / "checkpoints" / "step_0000020" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["extra"]["accum"] == 1
    assert len(list((two / "checkpoints" / "step_0000020" / "rng").iterdir())) == 2

    # elastic resume: a 1-process checkpoint at step 10 continued on 2 processes
    elastic = tmp_path / "elastic"
    (elastic / "checkpoints").mkdir(parents=True)
    shutil.copytree(one / "checkpoints" / "step_0000010", elastic / "checkpoints" / "step_0000010")
    proc = run_cli(smoke_args(token_dir, elastic, *extra), launcher=torchrun[:-1] + [str(free_port())])
    check_ok(proc)
    assert "re-seeded" in proc.stderr
    c = losses(elastic)
    assert sorted(c) == list(range(11, 21))
    for step in c:
        assert c[step] == pytest.approx(a[step], rel=1e-5), step


@pytest.mark.slow
def test_sigusr1_saves_and_exits_with_the_requeue_code_then_resumes(token_dir, tmp_path):
    run = tmp_path / "run"
    args = smoke_args(token_dir, run, *SLOW, "checkpoint.every=0")
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not any(r.get("step", 0) >= 3 for r in read_metrics(run / "metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "preempted" and 3 <= status["step"] < 20
    assert (run / "checkpoints" / f"step_{status['step']:07d}").is_dir()
    check_ok(run_cli(args))
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert sorted(losses(run)) == list(range(1, 21))


@pytest.mark.slow
def test_a_signal_during_startup_stops_the_run_before_its_first_update(token_dir, tmp_path):
    """Slurm's --signal warning can arrive while Python is still importing torch: the run must
    not die of it but exit 75 (to be requeued), and a second start trains from step 0."""
    run = tmp_path / "run"
    args = smoke_args(token_dir, run, "run.max_steps=4", "data.val_every=0")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.5)  # importing torch, before any of the trainer exists
    assert proc.poll() is None
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert json.loads((run / "status.json").read_text())["status"] == "preempted"
    assert not (run / "metrics.jsonl").exists() or losses(run) == {}
    check_ok(run_cli(args))
    assert sorted(losses(run)) == [1, 2, 3, 4]


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(token_dir, tmp_path,
                                                                         monkeypatch):
    cfg = load_config(TrainConfig, SMOKE, [f"data_dir={token_dir}", f"out_dir={tmp_path}",
                                    "run.max_steps=12", "checkpoint.every=4", "data.val_every=0"])
    trainer = Trainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)  # the GPT that computes the loss
    forward = model.forward
    calls = {"n": 0}

    def poisoned(idx, targets=None):
        logits, loss = forward(idx, targets)
        calls["n"] += 1
        if calls["n"] > 2 * 6:  # two micro-batches per step: poison step 7
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(model, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 7.*step_0000004"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000004"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_cli_errors_are_clear_and_name_the_problem(token_dir, tmp_path):
    proc = run_cli(smoke_args(token_dir, tmp_path, "optim.lr_peak=1"))
    assert proc.returncode == 2
    assert "unknown config key 'optim.lr_peak'; did you mean 'optim.lr'?" in proc.stderr
    proc = run_cli(smoke_args(token_dir, tmp_path, "model.vocab_size=1000"))
    assert proc.returncode == 2 and "vocabulary of 257" in proc.stderr
    proc = run_cli(smoke_args(tmp_path / "nowhere", tmp_path))
    assert proc.returncode == 2 and "no meta.json" in proc.stderr
    proc = run_cli(smoke_args(token_dir, tmp_path, f"run.resume={tmp_path}/missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_in_process_training_learns_and_writes_what_it_promises(token_dir, tmp_path):
    cfg = load_config(TrainConfig, SMOKE, [f"data_dir={token_dir}", f"out_dir={tmp_path}",
                                    "run.max_steps=30", "logging.wandb=true"])
    result = Trainer(cfg).fit()
    assert result.status == "finished" and result.step == 30
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.5
    for key in ("lr", "grad_norm", "tokens_per_s", "mfu", "tokens", "step_time_s"):
        assert key in steps[0]
    assert steps[-1]["tokens"] == 30 * 1024
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    assert (tmp_path / "config.yaml").read_text().count("n_layer: 2") == 1
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb offline run not written"
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000020",
                                                                            "step_0000030"]


def test_time_budget_stops_saves_and_finishes_with_the_lr_at_its_floor(token_dir, tmp_path,
                                                                       monkeypatch):
    from codegpt.train import checkpoint as ckpt

    write = ckpt.save_checkpoint

    def slow_write(*args, **kwargs):  # the budget runs out while a checkpoint is written
        time.sleep(0.25)
        return write(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_write)
    overrides = [f"data_dir={token_dir}", f"out_dir={tmp_path}", "run.max_steps=100000",
                 "run.max_minutes=0.15", "optim.warmup_steps=2", "data.val_every=0",
                 "checkpoint.every=1", "checkpoint.keep_last=2"]  # a save after every update
    result = Trainer(load_config(TrainConfig, SMOKE, overrides)).fit()
    assert result.status == "finished" and 2 < result.step < 100000
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "finished" and "max_minutes" in status["reason"]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == \
        f"step_{result.step:07d}"
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(steps) == result.step
    peak = steps[1]["lr"]
    assert steps[-1]["lr"] < 0.5 * peak  # decayed by the clock, not the 100,000 steps
    assert 5.0 <= steps[-1]["elapsed_s"] <= 120
    # started again, the spent budget is read back from the checkpoint: nothing more to do
    again = Trainer(load_config(TrainConfig, SMOKE, overrides)).fit()
    assert again.step == result.step and again.status == "finished"


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(token_dir, tmp_path):
    extra = ["run.max_steps=6", "checkpoint.every=0", "data.val_every=3"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    check_ok(run_cli(smoke_args(token_dir, eager, *extra, "optim.fused=false")))
    check_ok(run_cli(smoke_args(token_dir, compiled, *extra, "run.compile=true")))
    a, b = losses(eager), losses(compiled)
    assert sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    # the checkpoint of a compiled model holds plain parameter names
    from safetensors import safe_open

    with safe_open(str(compiled / "checkpoints" / "step_0000006" / "model.safetensors"), "pt") as f:
        assert "wte.weight" in f.keys() and not any("_orig_mod" in k for k in f.keys())


def test_resuming_with_changed_settings_says_so_and_a_changed_architecture_is_refused(
        token_dir, tmp_path):
    """A requeue (the same config) resumes silently; a resume with another optim.lr logs one
    warning naming every changed key with its old and new value; another model.n_layer is a
    one-line error naming the key, not a traceback."""
    quick = ["run.max_steps=2", "checkpoint.every=0", "data.val_every=0"]
    check_ok(run_cli(smoke_args(token_dir, tmp_path, *quick)))
    requeue = run_cli(smoke_args(token_dir, tmp_path, *quick))
    check_ok(requeue)
    assert "resumed from" in requeue.stderr and "changed settings" not in requeue.stderr
    changed = run_cli(smoke_args(token_dir, tmp_path, "run.max_steps=3", "optim.lr=0.001",
                                 "checkpoint.every=0", "data.val_every=0"))
    check_ok(changed)
    said = [line for line in changed.stderr.splitlines() if "changed settings" in line]
    assert len(said) == 1 and "WARNING" in said[0], changed.stderr[-3000:]
    assert "optim.lr: 0.003 -> 0.001" in said[0] and "run.max_steps: 2 -> 3" in said[0]
    assert "run.resume" not in said[0]
    refused = run_cli(smoke_args(token_dir, tmp_path, "run.max_steps=4", "model.n_layer=3"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model.n_layer=3 but the checkpoint") and "n_layer=2" in error
    assert "Traceback" not in refused.stderr


# every architecture option at once (dense and banded layers), trained with Muon
MODERN = ["optim.name=muon", "model.positions=rotary", "model.norm=rmsnorm", "model.mlp=swiglu",
          "model.qk_norm=true", "model.bias=false", "model.tie_embeddings=false",
          "model.zero_init_proj=true", "model.logit_softcap=30", "model.sparse_attention=true",
          "model.local_window=32"]


def test_a_muon_run_with_every_option_resumes_bit_exact_and_keeps_its_optimizer(
        token_dir, tmp_path):
    """A run stopped after step 3 and resumed from that checkpoint gives the uninterrupted
    run's losses, gradient norms and final weights bit for bit: Muon's momentum and AdamW's
    moments are both in the checkpoint. Resuming it with another optimizer is refused."""
    args = [*MODERN, "run.max_steps=6", "checkpoint.every=3", "data.val_every=3"]
    straight = tmp_path / "straight"
    check_ok(run_cli(smoke_args(token_dir, straight, *args)))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_0000003",
                    resumed / "checkpoints" / "step_0000003")
    proc = run_cli(smoke_args(token_dir, resumed, *args))
    check_ok(proc)
    assert "resumed from" in proc.stderr
    assert losses(resumed) == {k: v for k, v in losses(straight).items() if k > 3}
    assert losses(resumed, "grad_norm") == {k: v for k, v in losses(straight, "grad_norm").items()
                                            if k > 3}
    assert losses(resumed, "val_loss") == {6: losses(straight, "val_loss")[6]}
    from safetensors.torch import load_file
    a, b = (load_file(str(run / "checkpoints" / "step_0000006" / "model.safetensors"))
            for run in (straight, resumed))
    assert "lm_head.weight" in a and a.keys() == b.keys()  # the untied head is saved
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = Path("checkpoints") / "step_0000006"  # Muon's tuple options too: the same bytes
    assert (straight / last / "optimizer.pt").read_bytes() == \
        (resumed / last / "optimizer.pt").read_bytes()
    refused = run_cli(smoke_args(token_dir, resumed, *args[1:], "optim.name=adamw",
                                 "run.max_steps=7"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "optim.name=adamw but the checkpoint" in refused.stderr.strip().splitlines()[-1]


def test_config_changes_and_the_resume_check(tmp_path, caplog):
    """config_changes: every dotted key whose value differs, with (old, new), keys either side
    lacks included. check_resume_config: silent for the same config, one warning otherwise, an
    error for a changed architecture key; one an older checkpoint's config lacks is listed."""
    import logging

    import yaml

    from codegpt.config import to_dict
    from codegpt.errors import ConfigError
    from codegpt.train.trainer import ABSENT, check_resume_config, config_changes

    assert config_changes({"a": {"b": 1, "c": 2}, "x": 0}, {"a": {"b": 1, "c": 3, "d": 4}}) == {
        "a.c": (2, 3), "a.d": (ABSENT, 4), "x": (0, ABSENT)}
    assert config_changes({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) == {}

    def saved_as(cfg, drop=None):
        raw = to_dict(cfg)
        if drop:
            del raw["model"][drop]
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    cfg = load_config(TrainConfig, SMOKE, [f"out_dir={tmp_path}"])
    saved_as(cfg)
    with caplog.at_level(logging.WARNING):
        check_resume_config(tmp_path, load_config(TrainConfig, SMOKE, [f"out_dir={tmp_path}",
                                                                       "run.resume=never"]))
        assert not caplog.records  # run.resume is how a run finds its checkpoint
        check_resume_config(tmp_path, load_config(TrainConfig, SMOKE, [
            f"out_dir={tmp_path}", "optim.lr=0.01", "data.val_every=0"]))
    [said] = [r.getMessage() for r in caplog.records]
    assert said.endswith("with changed settings: data.val_every: 10 -> 0, optim.lr: 0.003 -> 0.01")
    with pytest.raises(ConfigError, match=r"^model.n_head=2 but the checkpoint .* n_head=4"):
        check_resume_config(tmp_path, load_config(TrainConfig, SMOKE, [f"out_dir={tmp_path}",
                                                                       "model.n_head=2"]))
    saved_as(cfg, drop="local_window")  # an older codegpt's config: listed, not refused
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_resume_config(tmp_path, cfg)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"model.local_window: '{ABSENT}' -> {cfg.model.local_window!r}"]
    # a key codegpt gained later: its absence means GPT-3's value, which the run must keep
    saved_as(cfg, drop="positions")
    with pytest.raises(ConfigError, match=r"^model.positions=rotary but the checkpoint .* "
                                          r"positions=learned: a resumed run keeps"):
        check_resume_config(tmp_path, load_config(TrainConfig, SMOKE, [
            f"out_dir={tmp_path}", "model.positions=rotary"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_resume_config(tmp_path, cfg)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"model.positions: '{ABSENT}' -> 'learned'"]


def test_time_budget_counts_earlier_processes_and_is_read_at_fixed_points():
    """TimeBudget: no budget reads None (the lr follows the steps); a budget counts the seconds
    of the processes a run resumes, changes only when read, and is spent at a share of 1."""
    from types import SimpleNamespace

    from codegpt.train.budget import TimeBudget

    one_cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    none = TimeBudget(0, one_cpu)
    none.start()
    assert not none.enabled and none.fraction is None and none.read() is None and not none.spent
    budget = TimeBudget(1.0, one_cpu)
    budget.resume(30.0)
    assert budget.elapsed() == 30.0 and budget.fraction is None  # not read yet
    budget.start()
    assert 0.5 <= budget.fraction < 0.6 and not budget.spent
    budget.resume(60.0)
    assert budget.fraction < 1 and budget.read() >= 1.0 and budget.spent
    assert budget.reason == "run.max_minutes=1 spent"
