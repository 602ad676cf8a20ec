"""The FSDP path on CPU: FSDP2 (``fully_shard``) over gloo on 2 processes, launched as a user
launches it (``accelerate launch --config_file configs/accelerate/fsdp-cpu.yaml train.py``).

One run of each kind is shared by the tests: a 1-process run (no FSDP) and an FSDP run of the
same config, each saving at step 3 and 6. ``batch.micro_batch_size=2`` gives 2 micro-batches
per process and update under FSDP (4 in one process), so gradient accumulation without
reduce-scatter (accelerate's ``no_sync``, FSDP2's ``set_requires_gradient_sync``) is in it too.
The same global batch holds the same sequences on 1 or N processes (``DistributedBatches``), so
the losses can be compared step by step. They differ only by the order of floating-point sums
(reduce-scatter versus local accumulation): ``REL`` is the stated tolerance.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from codegpt.train.batches import TokenWindows, loss_tokens, val_batches
from codegpt.checkpoint import TIED_KEYS, list_checkpoints, load_checkpoint_model
from codegpt.train.metrics import read_metrics
from codegpt.tokenizer.shards import SequenceIndex

from conftest import REPO, SMOKE

FSDP_CPU = REPO / "configs" / "accelerate" / "fsdp-cpu.yaml"
# --main_process_port 0: accelerate picks a free port, so parallel test runs do not collide
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU),
              "--main_process_port", "0"]
# 33 val sequences in micro-batches of 2: rank 0 scores 17 (9 forwards), rank 1 16 (8), so the
# ranks must pad to the same number of forwards or the FSDP all-gathers hang
ARGS = ["run.max_steps=6", "checkpoint.every=3", "checkpoint.keep_last=2", "data.val_every=3",
        "data.val_sequences=33", "batch.micro_batch_size=2"]
REL = 1e-5       # FSDP vs 1 process, per-step loss and val loss (measured: up to 1.2e-7)
TIMEOUT = 180    # a hung collective fails the test instead of blocking CI


def train(token_dir, run_dir, fsdp: bool, *extra: str) -> subprocess.CompletedProcess:
    """train.py on 1 process, or on 2 under FSDP. On a timeout the launcher gets SIGTERM first:
    torch's elastic agent then ends its workers (which run in sessions of their own, so killing
    the launcher alone would leave them blocked in a collective)."""
    cmd = (ACCELERATE if fsdp else [sys.executable]) + [
        str(REPO / "train.py"), str(SMOKE), f"data_dir={token_dir}", f"out_dir={run_dir}", *ARGS,
        *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT} s (a hung collective?):\n"
                    f"{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def losses(run_dir, key="loss"):
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def assert_close(got: dict, want: dict, steps, rel=REL):
    assert sorted(got) == list(steps)
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=rel), (step, got[step], want[step])


@pytest.fixture(scope="module")
def runs(token_dir, tmp_path_factory):
    """(one, fsdp, the FSDP launch): run folders of the same 6-step config on 1 process and
    under FSDP on 2."""
    root = tmp_path_factory.mktemp("fsdp")
    one, fsdp = root / "one", root / "fsdp"
    train(token_dir, one, fsdp=False)
    proc = train(token_dir, fsdp, fsdp=True)
    return one, fsdp, proc


def resume_from(src, step: int, dst):
    """A run folder holding only ``src``'s step checkpoint, as a preempted run leaves it."""
    name = f"step_{step:07d}"
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)


def test_fsdp_shards_and_its_losses_match_one_process(runs):
    one, fsdp, proc = runs
    state = json.loads((fsdp / "checkpoints" / "step_0000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["extra"]["accum"] == 2
    assert "FSDP2: parameters sharded" in proc.stderr, proc.stderr[-3000:]
    assert_close(losses(fsdp), losses(one), range(1, 7))
    assert_close(losses(fsdp, "grad_norm"), losses(one, "grad_norm"), range(1, 7))
    assert_close(losses(fsdp, "val_loss"), losses(one, "val_loss"), [3, 6])


def test_fsdp_checkpoint_resumes_under_fsdp(runs, token_dir, tmp_path):
    _, fsdp, _ = runs
    resumed = tmp_path / "resumed"
    resume_from(fsdp, 3, resumed)
    train(token_dir, resumed, fsdp=True)
    # the same world size and sharding: bit for bit, as a resumed 1-process run
    want = {step: loss for step, loss in losses(fsdp).items() if step > 3}
    assert losses(resumed) == want
    assert losses(resumed, "grad_norm") == {s: g for s, g in losses(fsdp, "grad_norm").items()
                                            if s > 3}
    assert losses(resumed, "val_loss") == {6: losses(fsdp, "val_loss")[6]}


def test_fsdp_checkpoint_resumes_in_one_process(runs, token_dir, tmp_path):
    one, fsdp, _ = runs
    resumed = tmp_path / "resumed"
    resume_from(fsdp, 3, resumed)
    proc = train(token_dir, resumed, fsdp=False)
    assert "re-seeded" in proc.stderr  # written by 2 processes, resumed on 1
    assert_close(losses(resumed), losses(fsdp), range(4, 7))
    assert_close(losses(resumed), losses(one), range(4, 7))


def test_fsdp_checkpoint_holds_full_weights_the_eval_commands_load(runs, token_dir):
    one, fsdp, _ = runs
    folder = fsdp / "checkpoints" / "step_0000006"
    full = load_file(str(one / "checkpoints" / "step_0000006" / "model.safetensors"))
    saved = load_file(str(folder / "model.safetensors"))
    assert sorted(saved) == sorted(full) and not set(TIED_KEYS) & set(saved)
    for name, tensor in full.items():  # whole tensors, not one rank's shard
        assert saved[name].shape == tensor.shape, name
        # measured: at most 1.4e-6 apart after 6 updates
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-5, msg=name)

    model, cfg = load_checkpoint_model(fsdp)  # a run folder: its newest checkpoint
    assert [p.name for p in list_checkpoints(fsdp / "checkpoints")] == ["step_0000003",
                                                                        "step_0000006"]
    assert cfg.n_layer == 2 and model.lm_head.weight is model.wte.weight
    # the loaded model scores the val sequences as the FSDP run did at its last step
    val = TokenWindows(SequenceIndex.open(token_dir, "val", cfg.block_size))
    total = n_total = 0.0
    with torch.no_grad():
        for x, y in val_batches(val, 33, 2, rank=0, world_size=1):
            _, loss = model(x.long(), y.long())
            n = loss_tokens(y)
            total, n_total = total + loss.double().item() * n, n_total + n
    assert total / n_total == pytest.approx(losses(fsdp, "val_loss")[6], rel=REL)


# Llama's architecture (the llama-* presets' options) at the smoke size, trained with Muon
# Muon's Newton-Schulz iterations run in bfloat16, which turns the 1e-7 differences of sharded
# gradient sums into loss differences of up to 2.3e-5 (measured); each rank orthogonalising only
# its own shard of a matrix instead would differ by 3e-3 at step 2 and 9e-3 at step 3 (measured
# by splitting each matrix in two rows-wise in one process), so REL_MUON tells the two apart.
REL_MUON = 2e-4
LLAMA_MUON = ["model.positions=rotary", "model.norm=rmsnorm", "model.mlp=swiglu",
              "model.bias=false", "model.qk_norm=true", "model.tie_embeddings=false",
              "optim.name=muon"]


@pytest.mark.slow
def test_fsdp_with_llama_s_architecture_and_muon_matches_one_process(token_dir, tmp_path):
    """Muon orthogonalises whole matrices: under FSDP2 each rank holds a shard of each, and the
    update must still be the unsharded one's (the losses match one process's)."""
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    train(token_dir, one, False, *LLAMA_MUON)
    proc = train(token_dir, fsdp, True, *LLAMA_MUON)
    assert "FSDP2: parameters sharded" in proc.stderr, proc.stderr[-3000:]
    assert_close(losses(fsdp), losses(one), range(1, 7), rel=REL_MUON)
    assert_close(losses(fsdp, "val_loss"), losses(one, "val_loss"), (3, 6), rel=REL_MUON)
