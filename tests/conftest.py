import os
import subprocess
import sys
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
