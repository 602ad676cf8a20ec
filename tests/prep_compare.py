"""What "identical output" means for data prep run by two executors."""

import hashlib
import json
from pathlib import Path

# written by each run about itself, not its output: the executor's logs, the output marker
# (it records when), the ids of submitted Slurm jobs; stats.json is compared apart
NOT_OUTPUT = ("logs/", "codegpt-output.json", "stats.json", "work/slurm_jobs.json")


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every file the run wrote as output (documents, rejects, samples, the dedup
    plan, per-task accounting), by path under ``out``."""
    hashes = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if not rel.startswith(NOT_OUTPUT) and not rel.endswith(".lock"):
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def stats_totals(out: Path) -> dict:
    """stats.json without its ``config`` (which names the executor)."""
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("config")
    return stats


def assert_same_output(got: Path, want: Path) -> None:
    a, b = output_hashes(got), output_hashes(want)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert any(k.startswith("data/") and k.endswith(".parquet") for k in a)
    assert stats_totals(got) == stats_totals(want)
