"""The CPU recipe search: which architecture, optimizer, model size, context, vocabulary, batch
and learning rate give the lowest HumanEval canonical-solution bits per byte for a fixed budget
of training time.

Each trial is a training config plus overrides (a YAML file of trials, see
bench/recipe_trials.yaml and bench/recipe_trials_2026.yaml). For each trial the sweep

1. gives it its budget, by ``--equal``:
   - ``wall`` (the default): ``--budget-minutes`` of wall time, as ``run.max_minutes``: the
     trial trains until its clock runs out, its lr's cosine decaying over the minutes, exactly
     as the reference run's pretraining does. Whatever makes a trial slower (a wider MLP, a
     longer context, compiling) costs it updates. Run it on a quiet machine, one trial at a
     time: another job on the cores takes updates from whichever trial it overlaps;
   - ``time``: ``--budget-minutes`` of this machine's time when quiet. The
     trial's own training throughput (its model, optimizer, precision and ``run.compile``) is
     measured first in CPU time, so a busy machine does not shrink it; times that throughput is
     its token budget. An option that learns more per token but runs slower is charged for it.
     A compiled trial is measured in wall time (inductor compiles in other processes), and its
     compilation is taken off its budget;
   - ``flops``: the same training compute for every trial, ``--budget-minutes`` of a quiet
     machine that does ``--flops-per-second`` (by default measured once on the first trial's
     model) divided by the trial's FLOPs per token;
2. trains it for that budget (``wall``) or the updates the budget buys (``time``, ``flops``),
   through ``codegpt train``, as a user would;
3. scores the canonical solutions' bits per byte (``codegpt.eval.likelihood``) and reads the
   last val loss. Each row also holds the trial's tokens, FLOPs and parameters.

    python -m bench.recipe_sweep --trials bench/recipe_trials_2026.yaml --budget-minutes 5

Prints a table and writes runs/bench/recipe_sweep.json (or --out); the runs go under --runs.
A finished trial (its run finished and scored) is not run again.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.config import load_config
from codegpt.model import GPT
from codegpt.train.config import TrainConfig
from codegpt.train.flops import flops_per_token, n_params
from codegpt.train.metrics import read_metrics
from codegpt.train.optim import ScheduledOptimizer

NAME = "recipe_sweep"


def trial_config(trial: dict, run_dir: Path, extra: list[str] = ()) -> tuple[str, list[str]]:
    overrides = [f"{k}={v}" for k, v in (trial.get("set") or {}).items()]
    return trial["config"], [*overrides, f"out_dir={run_dir}", *extra]


def cpu_throughput(cfg: TrainConfig, steps: int = 4, rounds: int = 3) -> tuple[float, float]:
    """(training tokens per second of a quiet machine, seconds of compilation) for the model,
    optimizer, precision and ``run.compile`` of ``cfg``. Eager: from CPU time, the process's CPU
    seconds per step divided by the threads torch uses (what wall time would be with nothing
    else running), so trials measured on a busy machine stay comparable. Compiled: from wall
    time, since inductor compiles in worker processes; the compilation is the first steps'
    time beyond the steady steps'. The fastest of ``rounds`` rounds of ``steps`` steps counts:
    another job on the machine only ever slows a round down (spinning threads cost CPU time
    too)."""
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = ScheduledOptimizer(model, cfg.optim, 100)
    opt.set_lr(1)
    forward = torch.compile(model) if cfg.run.compile else model
    micro = cfg.batch.micro_batch_size
    x = torch.randint(0, cfg.model.vocab_size, (micro, cfg.seq_len))
    bf16 = cfg.run.precision == "bf16"

    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            _, loss = forward(x, x)
        loss.backward()
        opt.step()

    clock = time.perf_counter if cfg.run.compile else time.process_time
    threads = 1 if cfg.run.compile else torch.get_num_threads()
    t0 = clock()
    step()
    step()
    first = (clock() - t0) / threads
    per_step = float("inf")
    for _ in range(rounds):
        t0 = clock()
        for _ in range(steps):
            step()
        per_step = min(per_step, (clock() - t0) / threads / steps)
    compile_s = max(0.0, first - 2 * per_step) if cfg.run.compile else 0.0
    return micro * cfg.seq_len / per_step, compile_s


def score(run_dir: Path, tokenizer: str) -> dict:
    from codegpt.eval.humaneval import first_problems
    from codegpt.eval.likelihood import checkpoint_likelihood

    lik = checkpoint_likelihood(run_dir, tokenizer, first_problems(0))
    records = read_metrics(run_dir / "metrics.jsonl")
    val = [r["val_loss"] for r in records if "val_loss" in r]
    rows = [r for r in records if "loss" in r]
    return {"canonical_bits_per_byte": lik["canonical_bits_per_byte"],
            "val_loss": val[-1] if val else None, "train_loss": rows[-1]["loss"],
            "wall_s": rows[-1].get("elapsed_s")}


def train(config: str, overrides: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "codegpt", "train", config, *overrides], check=True)


def row(trial: dict, cfg: TrainConfig, fpt: float, tps: float, compile_s: float,
        steps: int) -> dict:
    """The sweep's record of a trained trial: what it was, what it trained, how it scored."""
    tokens = steps * cfg.batch.global_batch_tokens
    return {"name": trial["name"], "note": trial.get("note", ""), "set": trial.get("set", {}),
            "flops_per_token": fpt, "tokens_per_s": round(tps),
            "compile_s": round(compile_s, 1), "steps": steps, "tokens": tokens,
            "flops": tokens * fpt, "params": n_params(cfg.model, include_position=True),
            **score(Path(cfg.out_dir), cfg.tokenizer)}


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--trials", type=Path, default=Path("bench/recipe_trials.yaml"))
    ap.add_argument("--budget-minutes", type=float, default=15.0,
                    help="quiet-machine training time each trial gets")
    ap.add_argument("--runs", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--only", nargs="*", help="run only these trials")
    ap.add_argument("--equal", choices=("wall", "time", "flops"), default="wall",
                    help="each trial gets the same wall time (run.max_minutes, the default), "
                         "quiet-machine time (from its measured throughput) or FLOPs")
    ap.add_argument("--flops-per-second", type=float, default=0.0,
                    help="--equal flops: the quiet machine's training FLOP/s (0: measure on the "
                         "first trial)")
    args = ap.parse_args()
    trials = yaml.safe_load(args.trials.read_text())["trials"]
    report = {"benchmark": NAME, "command": command_line(NAME), "date": date.today().isoformat(),
              "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "budget_minutes": args.budget_minutes, "equal": args.equal,
              "flops_per_second": args.flops_per_second, "trials": []}
    if args.out.exists():
        report["trials"] = json.loads(args.out.read_text()).get("trials", [])
    done = {t["name"] for t in report["trials"]}
    for trial in trials:
        name = trial["name"]
        if name in done or (args.only and name not in args.only):
            continue
        run_dir = args.runs / name
        config, overrides = trial_config(trial, run_dir)
        cfg = load_config(TrainConfig, config, overrides)
        if not cfg.model.vocab_size:
            meta = json.loads((Path(cfg.data_dir) / "meta.json").read_text())
            cfg.model.vocab_size = meta["vocab_size"]
        fpt = flops_per_token(cfg.model, cfg.seq_len)
        seconds, compile_s = args.budget_minutes * 60, 0.0
        tokens_per_step = cfg.batch.global_batch_tokens
        if args.equal == "wall":
            print(f"[{name}] {args.budget_minutes:g} minutes of wall time", flush=True)
            train(config, [*overrides, "run.max_steps=100000000",
                           f"run.max_minutes={args.budget_minutes}", "checkpoint.every=0",
                           "checkpoint.keep_last=1"])
            last = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r][-1]
            steps = last["step"]
            tps = steps * tokens_per_step / last["elapsed_s"]
        else:
            if args.equal == "time":
                tps, compile_s = cpu_throughput(cfg)
                seconds = max(0.0, seconds - compile_s)
            else:
                if not report["flops_per_second"]:
                    report["flops_per_second"] = cpu_throughput(cfg)[0] * fpt
                tps = report["flops_per_second"] / fpt
            steps = max(1, int(seconds * tps / tokens_per_step))
            print(f"[{name}] {tps:,.0f} tokens/s ({tps * fpt / 1e9:.1f} GFLOP/s"
                  f"{f', {compile_s:.0f} s compiling' if compile_s else ''}): "
                  f"{steps} updates of {tokens_per_step:,} tokens", flush=True)
            train(config, [*overrides, f"run.max_steps={steps}", f"data.val_every={steps}",
                           "checkpoint.every=0", "checkpoint.keep_last=1"])
        report["trials"].append(row(trial, cfg, fpt, tps, compile_s, steps))
        write_report(report, args.out)
        print(json.dumps(report["trials"][-1]), flush=True)
    print(f"\n{'trial':22s} {'tok/s':>7s} {'steps':>6s} {'tokens':>10s} {'PFLOP':>6s} {'val':>6s} "
          f"{'bits/B':>7s}")
    for r in report["trials"]:
        val = f"{r['val_loss']:.3f}" if r["val_loss"] is not None else "-"
        flops = r.get("flops", r["tokens"] * r["flops_per_token"])
        print(f"{r['name']:22s} {r['tokens_per_s']:7,d} {r['steps']:6d} {r['tokens']:10,d} "
              f"{flops / 1e15:6.2f} {val:>6s} {r['canonical_bits_per_byte']:7.3f}")
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
