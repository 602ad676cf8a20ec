"""FIM for free at CPU scale (Bavarian et al. 2022's claim, checked here): the CPU reference
recipe trained twice at equal compute, with data.fim_rate 0 and 0.5, then measured:

* left-to-right HumanEval: the canonical solutions' bits/byte (the paper: FIM costs nothing);
* single-line infilling: the canonical middles' bits/byte with the suffix (the FIM model) and
  without it (both), and pass@1 at T=0.2 of the FIM model infilling against the left-to-right
  model completing the prefix, cut at the end of the line.

Each step is the ``codegpt`` command a user would type (printed). The data, tokenizer and token
shards are the reference run's stages (configs/reference/cpu.yaml), made once in --work; both
trainings take the reference's train section with a fixed number of updates (--steps) instead
of its 15-minute clock, so they see the same tokens whatever the machine's load.

    python -m bench.fim_for_free                       # about 45 minutes on 2 cores
    python -m bench.fim_for_free --steps 200 --n 1 --limit 50   # a quick look

Prints a table and writes runs/bench/fim_for_free.json (or --out).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.config import load_config, yaml_text
from codegpt.reference import ReferenceConfig, git_commit, stage_raw

NAME = "fim_for_free"


def codegpt(*args: str) -> float:
    """Run one codegpt command (printed); its wall seconds."""
    print("$ codegpt " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "codegpt", *args], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--work", type=Path, default=Path("runs") / "fim-for-free",
                    help="where the data, shards, models and evaluations go (reused)")
    ap.add_argument("--steps", type=int, default=2800,
                    help="updates of each training (the reference's 15 minutes: about 2,800)")
    ap.add_argument("--rate", type=float, default=0.5, help="data.fim_rate of the FIM model")
    ap.add_argument("--n", type=int, default=5, help="samples per infilling task")
    ap.add_argument("--limit", type=int, default=0, help="only the first N infilling tasks")
    args = ap.parse_args()
    work = args.work
    ref = load_config(ReferenceConfig, "cpu", [f"out_dir={work}"])
    seconds: dict[str, float] = {}
    for stage, command, done in (("data", "prep", "stats.json"),
                                 ("tokenizer", "tokenizer", "tokenizer.json"),
                                 ("tokens", "tokenize", "meta.json")):
        if not (work / stage / done).is_file():
            config = work / "configs" / f"{stage}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml_text(stage_raw(ref, stage, work)))
            seconds[stage] = codegpt(command, str(config))
    train = stage_raw(ref, "train", work)
    models = {"l2r": 0.0, "fim": args.rate}
    results: dict[str, dict] = {}
    for name, rate in models.items():
        run = work / name
        raw = {**train, "out_dir": str(run),
               "run": {**train["run"], "max_steps": args.steps, "max_minutes": 0},
               "data": {**train.get("data", {}), "fim_rate": rate}}
        config = work / "configs" / f"train-{name}.yaml"
        config.write_text(yaml_text(raw))
        if not (run / "status.json").is_file() or json.loads(
                (run / "status.json").read_text()).get("status") != "finished":
            seconds[f"train {name}"] = codegpt("train", str(config))
        common = ["--checkpoint", str(run), "--tokenizer", str(work / "tokenizer")]
        he = work / "eval" / name / "humaneval"
        seconds[f"humaneval {name}"] = codegpt("eval", "humaneval", *common, "--out", str(he),
                                               "--likelihood-only")
        inf = work / "eval" / name / "single-line"
        limit = ["--limit", str(args.limit)] if args.limit else []
        seconds[f"infilling {name}"] = codegpt(
            "eval", "infilling", *common, "--out", str(inf), "--n", str(args.n),
            "--temperature", "0.2", *limit,
            *(["--fim-mode", "l2r"] if rate == 0 else []))
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        val = [m["val_loss"] for m in metrics if "val_loss" in m]
        h = json.loads((he / "results.json").read_text())
        i = json.loads((inf / "results.json").read_text())
        results[name] = {
            "fim_rate": rate, "steps": args.steps,
            "tokens": max((m.get("tokens", 0) for m in metrics), default=0),
            "val_loss": val[-1] if val else None,
            "humaneval_canonical_bits_per_byte": h["canonical_bits_per_byte"],
            "middle_bits_per_byte_with_suffix": i.get("middle_fim_bits_per_byte"),
            "middle_bits_per_byte_left_to_right": i["middle_l2r_bits_per_byte"],
            "single_line_pass@1": i["pass@1"], "single_line_exact_match": i.get("exact_match"),
            "single_line_syntax_rate": i["syntax_rate"], "infill_order": i["fim_order"],
            "n": args.n, "tasks": i["problems"]}
    report = {"benchmark": NAME, "date": date.today().isoformat(), "device": cpu_name(),
              "commit": git_commit(), "steps": args.steps, "results": results,
              "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "command": command_line(NAME)}
    print(f"\n{cpu_name()}, commit {report['commit']}, {args.steps} updates each")
    keys = ("val_loss", "humaneval_canonical_bits_per_byte", "middle_bits_per_byte_with_suffix",
            "middle_bits_per_byte_left_to_right", "single_line_pass@1",
            "single_line_exact_match", "single_line_syntax_rate")
    print(f"  {'':38s} " + " ".join(f"{m:>10s}" for m in results))
    for k in keys:
        cells = [results[m][k] for m in results]
        print(f"  {k:38s} " + " ".join(f"{c:10.4f}" if isinstance(c, float) else f"{'-':>10s}"
                                        for c in cells))
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
