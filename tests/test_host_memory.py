"""run.keep_host_memory: glibc keeps freed memory for the next step's tensors, so a CPU training
step stops faulting in fresh pages (counted by the kernel, not timed)."""

import subprocess
import sys

import pytest

from codegpt.config import load_config
from codegpt.train import trainer as trainer_module
from codegpt.train.config import TrainConfig
from codegpt.train.setup import keep_host_memory

from conftest import REPO, SMOKE

STEPS = """
import resource, sys, torch
from codegpt.train.setup import keep_host_memory
applied = keep_host_memory() if sys.argv[1] == "keep" else None
def step():  # what a training step does to the heap: many large blocks, all freed at its end
    blocks = [torch.empty(2 << 20).fill_(1.0) for _ in range(8)]  # 8 blocks of 8 MiB
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=300).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc: Linux only")
def test_kept_memory_spares_the_steps_their_page_faults():
    applied, kept = page_faults("keep")
    _, default = page_faults("default")
    assert applied == "True"
    assert kept * 4 < default, (kept, default)


def test_the_trainer_keeps_host_memory_unless_told_not_to(token_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_host_memory", lambda: calls.append(1) or True)
    for i, flag in enumerate(("true", "false")):
        cfg = load_config(TrainConfig, SMOKE, [f"data_dir={token_dir}", f"out_dir={tmp_path / str(i)}",
                                               f"run.keep_host_memory={flag}"])
        trainer_module.Trainer(cfg)
    assert calls == [1]


def test_off_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_host_memory() is False
