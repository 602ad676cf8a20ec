"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from codegpt.train.flops import cpu_name  # noqa: F401 (the benchmarks import it from here)

OUT_DIR = Path("runs") / "bench"
"""Where the benchmarks write their reports by default (relative to the repository root)."""


def bench_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser a benchmark starts from: ``doc`` (its module docstring) as the help text, and
    ``--out`` for its JSON report, by default ``runs/bench/<name>.json``."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR / f"{name}.json",
                    help="the JSON report (default: %(default)s); parent folders are created")
    return ap


def command_line(name: str) -> str:
    """The command that ran benchmark ``name``, as a report records it."""
    return " ".join(["python", "-m", f"bench.{name}", *map(shlex.quote, sys.argv[1:])])


def write_report(report: dict, out: str | Path) -> Path:
    """Write ``report`` as indented JSON to ``out``, creating its parent folders."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
