"""scripts/slurm/train.sbatch through a real Slurm scheduler (the ``slurm`` fixture): preempted,
requeued by Slurm, resumed from its checkpoint, with the losses of an uninterrupted run."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SMOKE

pytestmark = [pytest.mark.cluster, pytest.mark.slurm]

SBATCH = str(REPO / "scripts" / "slurm" / "train.sbatch")
# a model slow enough on one core (about 0.25 s a step) that a preemption lands mid-run
MODEL = ["model.n_layer=4", "model.d_model=256"]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def curves(run: Path) -> dict:
    """step -> (loss, grad_norm), and step -> val_loss."""
    train, val = {}, {}
    for r in read_metrics(run):
        if "loss" in r:
            train[r["step"]] = (r["loss"], r["grad_norm"])
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
    return {"train": train, "val": val}


def job_env() -> dict:
    """What the batch script needs from the submitting shell: the virtualenv to run in."""
    return {"VENV": str(Path(sys.executable).parents[1]), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline"}


def restarts_in_log(log: Path, job: str) -> list[int]:
    """SLURM_RESTART_COUNT of each incarnation, as the batch script printed it."""
    return [int(n) for n in re.findall(rf"^job {job} restart (\d+):", log.read_text(), re.M)]


def check_requeued_history(slurm, job: str, log: Path) -> int:
    """sacct shows each preemption as a REQUEUED incarnation and the last one COMPLETED; the
    script saw SLURM_RESTART_COUNT count them. Returns the number of restarts."""
    hist = slurm.history(job)
    states = [h["State"].split()[0] for h in hist]
    assert states[-1] == "COMPLETED" and states.count("REQUEUED") >= 1, (states, log.read_text())
    assert set(states[:-1]) == {"REQUEUED"}, states
    restarts = len(states) - 1
    assert restarts_in_log(log, job) == list(range(restarts + 1)), log.read_text()
    assert len(re.findall(r"resumed from .*step_\d+ at step \d+", log.read_text())) == restarts
    return restarts


def test_the_time_limit_warning_requeues_the_job_and_it_resumes_with_identical_losses(
        slurm, token_dir, tmp_path):
    """--time=2 --signal=USR1@60: Slurm's own warning before the time limit (sent up to a
    minute early) makes the run checkpoint and exit 75; the script requeues the job; each
    incarnation resumes from the newest checkpoint until the run is done."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = [str(SMOKE), f"data_dir={token_dir}", *MODEL, "run.max_steps=400",
            "checkpoint.every=100", "data.val_every=100"]
    # the uninterrupted run, on the other core meanwhile
    ref = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, f"out_dir={straight}"],
                           cwd=REPO, env={**os.environ, **job_env()}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        log = tmp_path / "job.out"
        job = slurm.sbatch("--job-name=codegpt-signal-test", "--nodes=1", "--ntasks-per-node=1",
                           "--cpus-per-task=1", "--gpus-per-node=0", "--time=2",
                           "--signal=USR1@60", f"--output={log}", SBATCH, *args,
                           f"out_dir={run}", env=job_env())
        assert slurm.wait(job, timeout=900) == "COMPLETED", log.read_text()[-3000:]
        _, err = ref.communicate(timeout=600)
        assert ref.returncode == 0, err[-2000:]
    finally:
        ref.kill()
    restarts = check_requeued_history(slurm, job, log)
    assert "exiting with code 75" in log.read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    got, want = curves(run), curves(straight)
    assert sorted(got["train"]) == list(range(1, 401))
    assert got == want  # bit for bit, across the restarts
    print(f"{restarts} restart(s)")


def test_two_tasks_requeued_by_scontrol_resume_with_the_losses_of_an_uninterrupted_run(
        slurm, token_dir, tmp_path):
    """Two ranks on gloo, started by srun; `scontrol requeue` (an administrator's or a
    preempting job's) stops both with SIGTERM; Slurm starts the job again, and it resumes."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = [str(SMOKE), f"data_dir={token_dir}", *MODEL, "run.max_steps=60",
            "checkpoint.every=10", "data.val_every=20"]
    port = 20000 + os.getpid() % 20000
    ref = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                          f"--master-port={port}", str(REPO / "train.py"), *args,
                          f"out_dir={straight}"], cwd=REPO, env={**os.environ, **job_env()},
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    log = tmp_path / "job.out"
    job = slurm.sbatch("--job-name=codegpt-requeue-test", "--nodes=1", "--ntasks-per-node=2",
                       "--cpus-per-task=1", "--gpus-per-node=0", "--time=10", f"--output={log}",
                       SBATCH, *args, f"out_dir={run}", env=job_env())
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_0000010").is_dir():
        assert time.time() < deadline and slurm.job(job).get("JobState") in ("PENDING", "RUNNING"), \
            log.read_text() if log.exists() else slurm.job(job)
        time.sleep(0.2)
    slurm.run("scontrol", "requeue", job)
    assert slurm.wait(job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    check_requeued_history(slurm, job, log)
    stopped = json.loads((run / "status.json").read_text())
    assert stopped["status"] == "finished"
    text = log.read_text()
    assert "2 ranks" in text and "exiting with code 75" in text, text[-3000:]
    got, want = curves(run), curves(straight)
    assert sorted(got["train"]) == list(range(1, 61))
    assert got == want
