"""The cluster tooling a user launches: accelerate configs and the Slurm script."""

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SMOKE

ACCEL = REPO / "configs" / "accelerate"


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "multi_node", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ACCEL / f"{name}.yaml"))
    assert cfg.mixed_precision == "bf16"
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"
        assert yaml.safe_load((ACCEL / "fsdp.yaml").read_text())["distributed_type"] == "FSDP"


def fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_sbatch_script_requeues_a_preempted_run_and_the_requeued_job_finishes(token_dir, tmp_path):
    """Run scripts/slurm/train.sbatch with stand-ins for srun and scontrol.

    The fake srun starts the one task with Slurm's variables and, like --signal=USR1@..., sends
    it SIGUSR1 once training is under way. The fake scontrol records the requeue.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    run_dir = tmp_path / "run"
    fake_bin(bin_dir, "srun", f"""
        while [[ "$1" == --* ]]; do shift; done
        export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS_PER_NODE=1
        "$@" &
        child=$!
        if [ "${{FAKE_SIGNAL:-1}}" = 1 ]; then
          for i in $(seq 1 2000); do
            grep -q '"step": 3' {run_dir}/metrics.jsonl 2>/dev/null && break
            sleep 0.05
          done
          pkill -USR1 -f "train.py {SMOKE}" || true
        fi
        wait $child
    """)
    fake_bin(bin_dir, "scontrol", f"""
        if [ "$1" = show ]; then echo localhost; exit 0; fi
        echo "$@" >> {tmp_path}/scontrol.log
    """)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1",
           "VENV": str(Path(os.sys.executable).parents[1]), "OMP_NUM_THREADS": "1"}
    args = [str(SMOKE), f"data_dir={token_dir}", f"out_dir={run_dir}",
            "model.n_layer=4", "model.d_model=256", "run.max_steps=20", "data.val_every=0"]
    script = str(REPO / "scripts" / "slurm" / "train.sbatch")
    first = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-2000:]
    assert "requeue 123" in (tmp_path / "scontrol.log").read_text()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "preempted"

    env["FAKE_SIGNAL"] = "0"
    env["SLURM_RESTART_COUNT"] = "1"
    second = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text()) ["status"] == "finished"
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1
