"""HumanEval decontamination: substring and n-gram matches, no false alarms on stdlib code,
and the same verdicts in every process."""

import gzip
import hashlib
import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from codegpt.errors import DataError
from codegpt.problems import load_problems
from data_prep.decontam import Decontaminator, docstrings, tokenize
from data_prep.dedup import normalise_whitespace

REPO = Path(__file__).resolve().parents[1]

UNRELATED_HEAD = textwrap.dedent('''\
    """Inventory helpers for a warehouse service."""
    import logging

    log = logging.getLogger(__name__)


    class Shelf:
        def __init__(self, capacity):
            self.capacity = capacity
            self.items = []

        def put(self, item):
            if len(self.items) >= self.capacity:
                raise ValueError("shelf full")
            self.items.append(item)
    ''')


@pytest.fixture(scope="module")
def deco() -> Decontaminator:
    return Decontaminator()


@pytest.fixture(scope="module")
def problems() -> dict:
    return load_problems(fields=("task_id", "prompt", "canonical_solution"))


def test_loads_all_humaneval_problems(deco, problems):
    assert len(problems) == 164
    assert "HumanEval/0" in problems and "HumanEval/163" in problems
    assert deco.task_ids == list(problems)  # benchmark order: the order verdicts name tasks in


def test_normalise_whitespace():
    assert normalise_whitespace("  a\n\n\tb   c \r\n") == "a b c"
    assert normalise_whitespace("") == ""
    assert normalise_whitespace("x") == "x"


def test_tokenize_ignores_whitespace():
    assert tokenize("x1 = foo(a,  b)->3") == ["x1", "=", "foo", "(", "a", ",", "b", ")", "-", ">", "3"]
    assert tokenize("a\n\n  b") == tokenize("a b")


def test_canonical_solution_pasted_into_unrelated_file(deco, problems):
    body = problems["HumanEval/0"]["canonical_solution"]
    text = UNRELATED_HEAD + "\n\ndef near_pairs(numbers, threshold):\n" + body + "\n\nSHELVES = 4\n"
    assert deco.check(text) == "humaneval_solution:HumanEval/0"


def test_reformatted_docstring_is_found(deco, problems):
    doc = docstrings(problems["HumanEval/12"]["prompt"])[0]
    rewrapped = textwrap.fill(" ".join(doc.split()), width=37)  # other line breaks
    text = (UNRELATED_HEAD + "\n    def pick(self, strings):\n        \"\"\"\n"
            + textwrap.indent(rewrapped, " " * 8) + "\n        \"\"\"\n        return None\n")
    assert deco.check(text) == "humaneval_docstring:HumanEval/12"


NGRAM_FILE = textwrap.dedent("""\
    def pair_products(numbers):
        total = 0
        for idx, elem in enumerate(numbers):
            for idx2, elem2 in enumerate(numbers):
                total += idx * idx2
        return total
    """)
# shares 20 tokens with HumanEval/0's solution: for idx , elem in enumerate ( numbers ) : ...
SHORT_NGRAM_FILE = "def walk(numbers):\n    for idx, elem in enumerate(numbers):\n        pass\n"
# shares 9 tokens: for idx , elem in enumerate ( numbers )


def test_shared_13_token_sequence_is_flagged(deco):
    assert deco.check(NGRAM_FILE) == "humaneval_ngram:HumanEval/0"


def test_ngram_length_is_configurable():
    assert Decontaminator(ngram=13).check(SHORT_NGRAM_FILE) is None
    assert Decontaminator(ngram=9).check(SHORT_NGRAM_FILE) == "humaneval_ngram:HumanEval/0"
    assert Decontaminator(ngram=0).check(NGRAM_FILE) is None  # 0 switches the test off
    with pytest.raises(ValueError, match="ngram"):
        Decontaminator(ngram=-1)


def test_short_solutions_are_not_substring_needles(deco, problems):
    short = problems["HumanEval/23"]["canonical_solution"]  # "return len(string)"
    assert len(normalise_whitespace(short)) < 50
    assert deco.check(UNRELATED_HEAD + "\ndef size(string):\n" + short) is None


@pytest.mark.parametrize("module", ["json.decoder", "textwrap", "string", "heapq", "bisect",
                                    "fractions", "statistics", "functools", "difflib",
                                    "random", "csv", "pprint"])
def test_stdlib_code_is_clean(deco, module):
    src = inspect.getsource(importlib.import_module(module))
    assert deco.check(src) is None


def test_problems_from_a_jsonl_gz(tmp_path):
    prob = {"task_id": "Mine/7",
            "prompt": 'def checksum(blob):\n    """Fold every byte of the blob into a rolling '
                      'sixteen bit checksum and return it."""\n',
            "canonical_solution": "    acc = 0\n    for byte in blob:\n"
                                  "        acc = (acc * 31 + byte) & 0xFFFF\n    return acc\n"}
    path = tmp_path / "mine.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(prob) + "\n")
    d = Decontaminator(problems_path=path)
    assert d.task_ids == ["Mine/7"]
    assert d.check("# copied\ndef f(blob):\n" + prob["canonical_solution"]) == "humaneval_solution:Mine/7"
    assert d.check('"""Fold every byte of the blob into a rolling\n sixteen bit checksum and '
                   'return it."""') == "humaneval_docstring:Mine/7"
    assert d.check("print('hello')\n") is None


def test_bad_problem_files_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Decontaminator(problems_path=tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "X/1", "prompt": "def f(): pass"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1 .*canonical_solution"):
        Decontaminator(problems_path=bad)
    with pytest.raises(ValueError, match=r"problem 0 \(X/1\) .*canonical_solution"):
        Decontaminator(problems=[{"task_id": "X/1", "prompt": "def f(): pass"}])
    with pytest.raises(ValueError, match="no problems"):
        Decontaminator(problems=[])


DETERMINISM_SCRIPT = """
import hashlib, inspect, json, textwrap
from data_prep.decontam import Decontaminator
d = Decontaminator()
texts = [json.loads(s) for s in {texts!r}]
print(json.dumps({{"keys": hashlib.sha256(d._keys.tobytes()).hexdigest(),
                   "verdicts": [d.check(t) for t in texts]}}))
"""


def test_same_results_whatever_the_hash_seed(deco, problems):
    texts = [NGRAM_FILE, SHORT_NGRAM_FILE, inspect.getsource(textwrap),
             UNRELATED_HEAD + problems["HumanEval/5"]["canonical_solution"]]
    script = DETERMINISM_SCRIPT.format(texts=[json.dumps(t) for t in texts])
    outs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    here = {"keys": hashlib.sha256(deco._keys.tobytes()).hexdigest(),
            "verdicts": [deco.check(t) for t in texts]}
    assert outs[0] == outs[1] == here
    assert here["verdicts"][0] == "humaneval_ngram:HumanEval/0"


def test_a_whole_problem_is_reported_as_its_solution(deco, problems):
    p = problems["HumanEval/0"]
    assert deco.check("import os\n\n" + p["prompt"] + p["canonical_solution"]) == \
        "humaneval_solution:HumanEval/0"
    assert deco.check("import os\n\n" + p["prompt"] + "    pass\n") == \
        "humaneval_docstring:HumanEval/0"


def test_every_named_benchmark_is_kept_out_and_a_planted_mbpp_copy_is_caught(tmp_path):
    """decontam.benchmarks covers MBPP when its problems are on the machine (here a local file
    in google-research's layout): a training file holding an MBPP solution, or an MBPP text in
    a docstring, is rejected as mbpp_*; HumanEval's reasons are unchanged; a benchmark that is
    not on the machine is said to be not covered, never fetched."""
    from test_benchmarks import MBPP_ROWS, write

    mbpp = write(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    deco = Decontaminator(benchmarks=["humaneval", "mbpp", "mbpp-plus"],
                          sources={"mbpp": str(mbpp)})
    assert deco.coverage["humaneval"] == 164 and deco.coverage["mbpp"] == 3
    assert str(deco.coverage["mbpp-plus"]).startswith("not covered")
    planted = ("import os\n\n\n" + MBPP_ROWS[0]["code"].replace("\n", "\n\n")
               + "\n\nprint(remove_Occ('hello', 'l'))\n")  # reformatted, in a bigger file
    assert deco.check(planted) == "mbpp_solution:Mbpp/11"
    doc = f'def f():\n    """{MBPP_ROWS[1]["text"]}\n    {MBPP_ROWS[1]["test_list"][0]}"""\n'
    assert deco.check(doc) == "mbpp_docstring:Mbpp/12"
    he = load_problems()["HumanEval/0"]
    assert deco.check(he["prompt"] + he["canonical_solution"]).startswith("humaneval_solution:")
    assert deco.check("def add(a, b):\n    return a + b\n") is None
