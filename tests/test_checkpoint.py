import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from codegpt import checkpoint as cp

from codegpt.train import checkpoint as ckpt


def save(root: Path, step: int, value: float = 1.0, numel: int = 1000, keep_last: int = 3):
    model = {"wte.weight": torch.full((numel,), value), "lm_head.weight": torch.zeros(1)}
    return ckpt.save_checkpoint(
        root, step, model_state=model, optim_state={"state": {}, "param_groups": []},
        sched_state={"last_epoch": step}, trainer_state={"step": step, "data": {}, "tokens_seen": 0,
                                                          "world_size": 1},
        config_yaml="a: 1\n", rank=0, barrier=lambda: None, keep_last=keep_last)


def test_save_verify_load_and_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, value=float(step), keep_last=2)
    assert [p.name for p in cp.list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    latest = cp.find_latest(tmp_path)
    state = cp.load_model_state(latest)
    assert torch.all(state["wte.weight"] == 4.0)
    assert state["lm_head.weight"] is state["wte.weight"]  # tied head restored
    assert cp.load_trainer_state(latest).step == 4


def test_the_tokenizer_hash_is_recorded_under_the_manifest(tmp_path):
    """save_checkpoint records the hash of the tokenizer the ids come from in trainer_state.json
    (so the manifest covers it); checkpoint_tokenizer_hash reads it; none recorded is None."""
    import json

    model = {"wte.weight": torch.ones(4)}
    kw = dict(model_state=model, optim_state={}, sched_state={}, config_yaml=None, rank=0,
              barrier=lambda: None, keep_last=3)
    state = {"step": 1, "data": {}, "tokens_seen": 0, "world_size": 1}
    folder = ckpt.save_checkpoint(tmp_path, 1, trainer_state=state, tokenizer_hash="ab" * 32, **kw)
    assert cp.checkpoint_tokenizer_hash(folder) == "ab" * 32
    assert cp.load_trainer_state(folder).tokenizer_hash == "ab" * 32
    path = folder / "trainer_state.json"
    path.write_text(path.read_text().replace("ab" * 32, "cd" * 32))  # same size, other hash
    with pytest.raises(cp.CheckpointError, match="trainer_state.json does not match its sha256"):
        cp.verify(folder)
    older = ckpt.save_checkpoint(tmp_path, 2, trainer_state={**state, "step": 2}, **kw)
    assert cp.checkpoint_tokenizer_hash(older) is None
    assert "tokenizer_hash" not in json.loads((older / "trainer_state.json").read_text())


def test_truncated_file_is_a_clear_error_and_auto_resume_skips_it(tmp_path, caplog):
    save(tmp_path, 1, value=1.0)
    bad = save(tmp_path, 2, value=2.0)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(cp.CheckpointError, match="model.safetensors has 100 bytes.*truncated"):
        cp.verify(bad)
    assert cp.find_latest(tmp_path).name == "step_0000001"
    assert "skipping checkpoint" in caplog.text


def test_bit_flip_and_missing_manifest_are_refused(tmp_path):
    good = save(tmp_path, 1)
    f = good / "optimizer.pt"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(cp.CheckpointError, match="optimizer.pt does not match its sha256"):
        cp.verify(good)
    (good / "manifest.json").unlink()
    with pytest.raises(cp.CheckpointError, match="save did not finish"):
        cp.verify(good)
    assert cp.find_latest(tmp_path) is None


SAVER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_checkpoint import save
    root = Path(sys.argv[1])
    for step in range(1, 10_000):
        save(root, step, value=float(step), numel=4_000_000, keep_last=2)
""")


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """Kill a process that saves 16 MB checkpoints in a loop while a save is in flight."""
    code = SAVER.format(tests=str(Path(__file__).parent))
    for attempt in range(5):
        root = tmp_path / f"attempt{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
        try:
            deadline = time.time() + 120
            # wait until at least one checkpoint is complete and the next save is under way
            while time.time() < deadline:
                if cp.list_checkpoints(root) and list(root.glob(".tmp_step_*/model.safetensors")):
                    break
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        if list(root.glob(".tmp_step_*")):
            break
    assert list(root.glob(".tmp_step_*")), "never caught a save in flight"
    latest = cp.find_latest(root)
    assert latest is not None
    step = cp.load_trainer_state(latest).step
    assert torch.all(cp.load_model_state(latest)["wte.weight"] == float(step))
    ckpt.remove_stale_tmp(root)
    assert not list(root.glob(".tmp_step_*"))


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_the_manager_saves_every_n_steps_at_the_end_out_of_time_and_on_a_stop(tmp_path):
    """CheckpointManager.due: every checkpoint.every steps (0: only at the end), the last step,
    the update that spent the time budget; on a stop, unless that step is already saved."""
    from codegpt.train.config import CheckpointSection

    def manager(every):
        return ckpt.CheckpointManager(CheckpointSection(every=every), "auto", tmp_path, None,
                                      config=None, tokenizer_hash=None, model=None, optim=None,
                                      batches=None)

    every4 = manager(4)
    assert [s for s in range(1, 11) if every4.due(s, 10, out_of_time=False)] == [4, 8, 10]
    assert every4.due(5, 10, out_of_time=True)
    at_end = manager(0)
    assert [s for s in range(1, 11) if at_end.due(s, 10, out_of_time=False)] == [10]
    assert at_end.due_on_stop(3) and not at_end.holds(3)
    at_end.last = tmp_path / "checkpoints" / cp.step_dir_name(3)
    assert at_end.holds(3) and not at_end.due_on_stop(3) and at_end.due_on_stop(4)


def test_a_checkpoint_is_hashed_once_per_process_and_a_change_is_still_caught(tmp_path,
                                                                               monkeypatch):
    """Resolving init_from and starting from it (or loading a model to sample and score it)
    verify the same folder twice: the second reuses the first's hashes. A file rewritten since,
    even at the same size, is hashed again and refused."""
    folder = save(tmp_path, 5)
    hashed = []
    real = cp.sha256_file
    monkeypatch.setattr(cp, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    cp.verify(folder)
    first = sorted(hashed)
    assert "model.safetensors" in first
    cp.resolve_checkpoint(tmp_path)  # a run's checkpoints folder: its newest, verified again
    cp.find_latest(tmp_path)
    assert sorted(hashed) == first  # nothing hashed a second time
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))  # same size, new contents
    with pytest.raises(cp.CheckpointError, match="does not match its sha256"):
        cp.verify(folder)
