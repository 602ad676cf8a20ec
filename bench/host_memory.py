"""Training throughput with ``run.keep_host_memory`` on and off: the same short `codegpt train`
run, alternating the two settings for ``--rounds`` rounds, each its own process.

With glibc's default, freed blocks above its mmap threshold go back to the OS and the next
step's tensors fault in fresh pages, which the kernel zeroes; ``run.keep_host_memory`` keeps
them for reuse. Each run reports its steps/s over the steps after ``--skip`` (its warmup and
first allocations left out), its minor page faults and the kernel (system) CPU seconds.

    python -m bench.host_memory --config runs/reference/configs/train.yaml

``--config``: a training config; by default the one the reference run's pretraining ran with
(``make reference`` writes it). Prints a table and writes runs/bench/host_memory.json (or
--out).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.train.metrics import read_metrics

NAME = "host_memory"


def one_run(config: str, keep: bool, steps: int, skip: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "codegpt", "train", config,
                        f"out_dir={out}", f"run.max_steps={steps}", "run.max_minutes=0",
                        "data.val_every=0", "checkpoint.every=0",
                        f"run.keep_host_memory={str(keep).lower()}"],
                       check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [r for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r]
    timed = rows[skip:]
    seconds = timed[-1]["elapsed_s"] - rows[skip - 1]["elapsed_s"]
    return {"keep_host_memory": keep, "steps": len(timed), "seconds": seconds,
            "steps_per_s": len(timed) / seconds,
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_cpu_s": after.ru_stime - before.ru_stime}


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--config", default="runs/reference/configs/train.yaml")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--skip", type=int, default=20, help="first steps left out of the timing")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs = []
    for r in range(args.rounds):
        for keep in (False, True):
            runs.append({"round": r, **one_run(args.config, keep, args.steps, args.skip)})
            x = runs[-1]
            print(f"round {r} keep_host_memory={keep!s:5s} {x['steps_per_s']:6.2f} steps/s "
                  f"{x['minor_faults']:>10,} minor faults {x['system_cpu_s']:6.1f} s system",
                  flush=True)
    ratios = [k["steps_per_s"] / d["steps_per_s"] for d, k in zip(runs[::2], runs[1::2])]
    report = {"benchmark": NAME, "command": command_line(NAME), "date": date.today().isoformat(),
              "cpu": cpu_name(), "config": str(args.config), "runs": runs,
              "speedup_per_round": ratios, "speedup_median": statistics.median(ratios)}
    print(f"keep_host_memory on / off: {report['speedup_median']:.2f}x steps/s "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
