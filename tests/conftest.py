import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byte_shards import stdlib_documents, write_byte_shards

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "train" / "smoke.yaml"


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """Byte-level token shards of ~2 MB of the standard library (train + val)."""
    out = tmp_path_factory.mktemp("tokens")
    write_byte_shards(out, stdlib_documents(), max_mb=2.0, seed=0,
                      tokens_per_shard=400_000)
    return out


def run_cli(args: list[str], launcher: list[str] | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess (optionally under torchrun) from the repo root."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def kill_at_checkpoint(args: list[str], run_dir: Path, step: int = 10,
                       timeout: float = 240) -> None:
    """Run train.py with ``args`` and SIGKILL it as soon as its step-``step`` checkpoint is on
    disk, as a preempted node or an OOM killer would."""
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"step_{step:07d}").exists():
        assert proc.poll() is None and time.time() < deadline, f"run ended before step {step}"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm cluster for the session (``slurm_cluster``): the local one-node cluster,
    stopped at the end with everything it ran, or the existing one SLURM_PARTITION names."""
    import slurm_cluster

    folder = tmp_path_factory.mktemp("slurm")
    try:
        cluster = slurm_cluster.start(folder)
    except slurm_cluster.CannotStart as e:
        pytest.skip(f"no Slurm cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.cancel_ours()
        if cluster.folder is not None:
            slurm_cluster.stop(cluster.folder)


@pytest.fixture
def count_runs(monkeypatch):
    """How many programs each call of the scorer's sandbox ran (a list, one entry per call)."""
    from codegpt.eval import humaneval

    runs = []
    real = humaneval.run_programs

    def counting(programs, **kw):
        runs.append(len(programs))
        return real(programs, **kw)

    monkeypatch.setattr(humaneval, "run_programs", counting)
    return runs


SANDBOX_KEYS = ("timeout", "workers", "packages", "max_completion_bytes")


def score_file(path, out_dir=None, problems_path="", **settings) -> dict:
    """``evaluate_samples_file`` of the samples file ``path`` under an eval config made of
    ``settings`` (``timeout=2.0``, ``allow_missing=True``, ``benchmark="mbpp"``, ...), its
    results beside it unless ``out_dir`` says otherwise."""
    from codegpt.eval.config import EvalConfig, SandboxSection
    from codegpt.eval.humaneval import evaluate_samples_file

    box = {k: settings.pop(k) for k in SANDBOX_KEYS if k in settings}
    if box.get("workers") is None:
        box.pop("workers", None)
    if "packages" in box:
        box["packages"] = list(box["packages"])
    cfg = EvalConfig(samples=str(path), out_dir=str(out_dir or os.path.dirname(path)),
                     problems=str(problems_path), sandbox=SandboxSection(**box), **settings)
    return evaluate_samples_file(cfg)
