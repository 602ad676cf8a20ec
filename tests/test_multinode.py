"""Multi-node training without a cluster: two nodes of one process each, on this machine.

Each node is a launcher of its own, as it would be on a machine of its own: ``torchrun --nnodes
2 --nproc-per-node 1`` with c10d rendezvous (``--rdzv-endpoint``, the node rank left to the
rendezvous) or static rendezvous (``--master-addr/--master-port``, ``--node-rank``), or
``accelerate launch --config_file configs/accelerate/multi_node.yaml --machine_rank R`` as the
README tells a user without Slurm. Every launch trains the smoke config for 6 steps, over gloo,
against the same config on one node of 2 processes (``torchrun --nproc-per-node 2``): the same
ranks see the same data and run the same reductions, so the per-step losses, gradient norms,
lrs and val losses must be equal bit for bit, and so must the weights in the checkpoints.

The two nodes share this machine's disk, as cluster nodes share a filesystem; the last tests
give each node a disk of its own (its own working directory, a relative ``out_dir``, as two
machines with their own checkouts would have), which a run must refuse instead of writing
checkpoints with a rank missing or resuming its ranks from different checkpoints.

Every launcher runs in a session of its own, and torchrun starts its workers in sessions of
theirs: ``Nodes`` records every process under a launcher while it runs and kills whatever is
left of them when the test ends, passed or failed, so a hung rendezvous leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codegpt.checkpoint import list_checkpoints, verify
from codegpt.train.metrics import read_metrics

from conftest import REPO, SMOKE

pytestmark = pytest.mark.cluster

MULTI_NODE = REPO / "configs" / "accelerate" / "multi_node.yaml"
ARGS = ["run.max_steps=6", "checkpoint.every=3", "data.val_every=3"]
KEYS = ("loss", "grad_norm", "lr", "loss_tokens", "tokens")  # every step's, compared exactly
TIMEOUT = 120  # seconds for a whole launch: a hung rendezvous or collective fails the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def node_launcher(kind: str, rank: int, port: int, run_id: str) -> list[str]:
    """The launcher of node ``rank`` of 2, one process each, meeting at 127.0.0.1:``port``."""
    if kind == "c10d":  # no --node-rank: the rendezvous gives the ranks (torchrun ignores it)
        return torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id)
    if kind == "static":
        return torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                        "--master-addr", "127.0.0.1", "--master-port", str(port))
    if kind == "accelerate":  # num_processes counts all nodes' processes: the config's 16 GPUs
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(MULTI_NODE), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(port), "--num_machines", "2", "--num_processes", "2"]
    raise ValueError(kind)


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), None if it is not running (gone,
    or a zombie): a pid and this tell a process apart from a later one that reuses its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(seen: set[tuple[int, str]]) -> list[int]:
    """The pids of ``seen`` (pid, start ticks) that still run: the same processes, not later
    ones that reuse their pids."""
    return sorted(pid for pid, ticks in seen if _start_ticks(pid) == ticks)


def _descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start ticks) of every process under ``pid`` now, whatever its session."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            ticks = _start_ticks(child)
            if ticks is not None:
                found.add((child, ticks))
                todo.append(child)
    return found


class Nodes:
    """Node launchers started together, each in a session of its own, its output in a log.

    ``wait`` waits for all of them (failing the test after ``TIMEOUT``); while they run it
    records every process under them (torchrun's workers are in sessions of their own, so a
    launcher's process group does not hold them). ``kill`` (on leaving the ``with`` block,
    however) SIGKILLs what is left of the launchers' groups and of every recorded process,
    checking each pid's start time so that no other process is ever hit; ``left`` lists the
    recorded processes still alive."""

    def __init__(self, commands: list[list[str]], logs: list[Path], cwds: list[Path] | None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.seen: set[tuple[int, str]] = set()
        for cmd, log, cwd in zip(commands, logs, cwds or [REPO] * len(commands)):
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out,
                                                   stderr=subprocess.STDOUT,
                                                   start_new_session=True))
            ticks = _start_ticks(self.procs[-1].pid)
            if ticks is not None:
                self.seen.add((self.procs[-1].pid, ticks))

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        """The launchers' exit codes, once all have exited."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            for p in self.procs:
                if p.poll() is None:
                    self.seen |= _descendants(p.pid)
            if time.monotonic() > deadline:
                pytest.fail(f"the nodes did not finish in {timeout:.0f} s (a hung rendezvous "
                            f"or collective?):\n{self.output()}")
            time.sleep(0.1)
        return [p.returncode for p in self.procs]

    def output(self, chars: int = 3000) -> str:
        return "\n".join(f"--- node {i} ---\n{log.read_text()[-chars:]}"
                         for i, log in enumerate(self.logs))

    def left(self) -> list[int]:
        return _alive(self.seen)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.seen |= _descendants(p.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)  # the launcher's session: no new workers
        for pid in _alive(self.seen):  # workers, and anything they started before the kill
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        deadline = time.monotonic() + 10  # SIGKILL is not instant: see them go
        while self.left() and time.monotonic() < deadline:
            time.sleep(0.05)


def train_args(token_dir: Path, run_dir: str | Path) -> list[str]:
    return [str(REPO / "train.py"), str(SMOKE), f"data_dir={token_dir}", f"out_dir={run_dir}",
            *ARGS]


def launch(launchers: list[list[str]], args: list[str], logs: list[Path],
           cwds: list[Path] | None = None) -> tuple[list[int], str]:
    """Run train.py with ``args`` under each launcher at once (a node each); returns their exit
    codes and their output. Asserts that no process of theirs outlived them."""
    with Nodes([launcher + args for launcher in launchers], logs, cwds) as nodes:
        codes = nodes.wait()
        for _ in range(50):  # the launchers wait for their workers; allow a moment to reap
            if not nodes.left():
                break
            time.sleep(0.1)
        assert not nodes.left(), f"processes left behind: {nodes.left()}\n{nodes.output()}"
        return codes, nodes.output()


def two_nodes(kind: str, token_dir: Path, run_dir: Path, logs: Path) -> tuple[list[int], str]:
    port = free_port()
    launchers = [node_launcher(kind, rank, port, f"codegpt-{port}") for rank in (0, 1)]
    return launch(launchers, train_args(token_dir, run_dir),
                  [logs / f"{kind}-node{rank}.log" for rank in (0, 1)])


def by_step(run_dir: Path, key: str) -> dict:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str | None]:
    """Every path under ``folder``, with its file's sha256 (None for a folder)."""
    return {str(p.relative_to(folder)): sha256(p) if p.is_file() else None
            for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def one_node(token_dir, tmp_path_factory) -> Path:
    """The run folder of the 2-process run on one node that every 2-node run must equal."""
    root = tmp_path_factory.mktemp("one-node")
    launcher = torchrun("--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(free_port()))
    codes, out = launch([launcher], train_args(token_dir, root / "run"), [root / "node.log"])
    assert codes == [0], out
    return root / "run"


def assert_same_training(got: Path, want: Path, steps: list[int]) -> None:
    """``got``'s metrics of ``steps`` and its last checkpoint's weights, optimizer state and
    torch RNG streams are ``want``'s, bit for bit."""
    for key in KEYS:
        mine, theirs = by_step(got, key), by_step(want, key)
        assert sorted(mine) == steps, (key, sorted(mine))
        assert mine == {s: theirs[s] for s in steps}, key  # exact floats, not approximately
    val = [s for s in steps if s % 3 == 0]
    assert by_step(got, "val_loss") == {s: by_step(want, "val_loss")[s] for s in val}
    last = got / "checkpoints" / "step_0000006"
    files = verify(last)["files"]
    assert sorted(f for f in files if f.startswith("rng/")) == ["rng/rank_00000.pt",
                                                                "rng/rank_00001.pt"]
    ref = want / "checkpoints" / "step_0000006"
    assert sha256(last / "model.safetensors") == sha256(ref / "model.safetensors")
    # the optimizer's tensors, exactly (a resumed run saves its betas as a list, not a tuple)
    mine, theirs = (torch.load(d / "optimizer.pt", weights_only=True) for d in (last, ref))
    assert mine["state"].keys() == theirs["state"].keys()
    for param, state in mine["state"].items():
        assert state.keys() == theirs["state"][param].keys()
        for key, value in state.items():
            assert torch.equal(value, theirs["state"][param][key]), (param, key)
    for rank in (0, 1):  # python's and numpy's streams are not seeded: the OS's, per process
        name = f"rng/rank_{rank:05d}.pt"
        mine, theirs = (torch.load(d / name, weights_only=True)["torch"] for d in (last, ref))
        assert torch.equal(mine, theirs), name
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["extra"]["accum"] == 1
    assert json.loads((got / "status.json").read_text())["status"] == "finished"
    assert not list((got / "checkpoints").glob(".tmp_*"))


@pytest.mark.parametrize("kind", ["c10d", "static", "accelerate"])
def test_two_nodes_train_bit_for_bit_as_two_processes_on_one_node(kind, one_node, token_dir,
                                                                  tmp_path):
    run = tmp_path / "run"
    codes, out = two_nodes(kind, token_dir, run, tmp_path)
    assert codes == [0, 0], out
    assert_same_training(run, one_node, list(range(1, 7)))
    # one process of the two writes the run folder's files and says so (which one is the
    # rendezvous's choice under c10d); both say they finished
    assert out.count("saved checkpoint") == 2, out
    assert out.count("finished at step 6") == 2, out


def test_two_nodes_resume_the_one_node_checkpoint_bit_for_bit(one_node, token_dir, tmp_path):
    """A run preempted on one node, requeued on two: the step-3 checkpoint of the one-node run
    (every rank's RNG streams, the data position) continues on 2 nodes as it did on one."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(one_node / "checkpoints" / "step_0000003", run / "checkpoints" / "step_0000003")
    codes, out = two_nodes("c10d", token_dir, run, tmp_path)
    assert codes == [0, 0], out
    assert "resumed from" in out and "re-seeded" not in out
    assert_same_training(run, one_node, [4, 5, 6])


# train() as train.py calls it, then what is left of the process group
AFTER_TRAIN = """import sys
import torch.distributed as dist
from codegpt.config import load_config
from codegpt.train.config import TrainConfig
from codegpt.train.trainer import train
result = train(load_config(TrainConfig, sys.argv[1], sys.argv[2:]))
print(f"{result.status} at step {result.step}; process group alive: {dist.is_initialized()}")
"""


def test_a_finished_run_destroys_its_process_group(token_dir, tmp_path):
    """A rank that exits with its gloo process group alive can abort after the run finished
    (SIGABRT, "terminate called without an active exception": gloo's threads free finished
    work while the interpreter shuts down), now and then, more often on a busy machine; the
    other node's launcher then waits 5 minutes for it at its exit barrier. ``train`` destroys
    the group before it returns, on every rank."""
    port = free_port()
    launchers = [node_launcher("static", rank, port, "") + ["--no-python", sys.executable, "-c",
                                                            AFTER_TRAIN] for rank in (0, 1)]
    codes, out = launch(launchers, [str(SMOKE), f"data_dir={token_dir}",
                                    f"out_dir={tmp_path / 'run'}", "run.max_steps=2",
                                    "data.val_every=0"],
                        [tmp_path / f"node{rank}.log" for rank in (0, 1)])
    assert codes == [0, 0], out
    assert out.count("finished at step 2; process group alive: False") == 2, out


def node_local(token_dir: Path, root: Path) -> tuple[list[int], str, list[Path]]:
    """Two nodes (static rendezvous: node 0 is rank 0) with disks of their own: each in its
    own working directory with ``out_dir=run``, as two machines whose checkouts hold runs/.
    Returns the exit codes, the output and the two working directories."""
    disks = [root / f"disk{rank}" for rank in (0, 1)]
    for disk in disks:
        disk.mkdir(exist_ok=True)
    port = free_port()
    codes, out = launch([node_launcher("static", rank, port, "") for rank in (0, 1)],
                        train_args(token_dir, "run"),
                        [root / f"node{rank}.log" for rank in (0, 1)], cwds=disks)
    return codes, out, disks


def test_a_run_folder_the_nodes_do_not_share_fails_at_the_first_save(token_dir, tmp_path):
    """Rank 1 cannot put its RNG state into rank 0's checkpoint: every rank stops with an error
    that says why, and neither disk holds a checkpoint (rank 0's lacking rank 1's RNG state)
    or a folder that rank 1 made."""
    codes, out, (disk0, disk1) = node_local(token_dir, tmp_path)
    assert 0 not in codes, out
    assert out.count("error: checkpoint step_0000003") == 2, out  # on both nodes
    assert "shared filesystem" in out
    assert list_checkpoints(disk0 / "run" / "checkpoints") == []
    assert not list((disk0 / "run" / "checkpoints").glob(".tmp_*"))
    assert json.loads((disk0 / "run" / "status.json").read_text())["status"] == "failed"
    assert list(disk1.iterdir()) == []


def test_nodes_that_find_different_checkpoints_refuse_to_resume(one_node, token_dir, tmp_path):
    """Node 1's disk holds an earlier checkpoint of the run, node 0's none: rank 1 would resume
    at step 3 while rank 0 starts at step 0, averaging the gradients of two different models
    until rank 0 ran out of steps. Every rank refuses to start instead, and neither disk
    changes."""
    theirs = tmp_path / "disk1" / "run" / "checkpoints"
    theirs.mkdir(parents=True)
    shutil.copytree(one_node / "checkpoints" / "step_0000003", theirs / "step_0000003")
    before = tree(tmp_path / "disk1")
    codes, out, (disk0, disk1) = node_local(token_dir, tmp_path)
    assert 0 not in codes, out
    assert out.count("error: the ranks do not find the same checkpoint") == 2, out  # both nodes
    assert "shared filesystem" in out
    assert list(disk0.iterdir()) == []  # the refused run removed the folder it claimed
    assert tree(disk1) == before
