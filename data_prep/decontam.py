"""HumanEval decontamination: drop training files that contain a benchmark problem.

A file is contaminated when, after whitespace normalisation (every run of whitespace becomes
one space), it contains

* a canonical solution (``humaneval_solution:<task_id>``), or
* a HumanEval prompt's docstring (``humaneval_docstring:<task_id>``),

each only when the needle is at least ``min_chars`` (50) normalised characters, so a trivial
``return len(string)`` does not match half the corpus; or when it shares

* an n-gram of ``ngram`` (13) code tokens — identifiers, numbers, single punctuation / operator
  characters — with a problem's prompt + canonical solution (``humaneval_ngram:<task_id>``),
  which catches copies whose strings, layout or surrounding code were edited.

The first test that matches names the reason, in this order (a solution is the worse leak, so a
file holding a whole problem is reported as ``humaneval_solution``); within a test the first
problem in benchmark order names the task.

Thirteen such tokens are a short stretch of code, and many stretches of the benchmark are in
every code base: doctest data (``[1, 2, 3], [4, 5, 6]``), ``for i in range(n): for j in
range(i + 1, n):``. On a sample of the interpreter's stdlib and site-packages, 6% of files
shared such an n-gram with HumanEval. So only benchmark n-grams holding at least
``min_ngram_names`` (3) distinct names — identifiers of two or more characters that are not
keywords, builtins, ``self`` or ``cls`` — are used; every problem keeps at least ten of them.

Speed (it runs on every file that passes the quality filters): tokens are mapped to ids of the
benchmark's own vocabulary (a token the benchmark never uses cannot be part of a shared n-gram,
so it maps to 0), the n-grams of a file are hashed all at once with numpy (a polynomial of the
ids in wrapping uint64 arithmetic) and looked up in a sorted array of the benchmark's n-gram
hashes; a hit is confirmed by comparing the ids themselves, so the test is exact. The substring
tests run ``needle in text`` only for needles whose anchor tokens (their longest identifiers)
all occur in the file. Nothing depends on Python's salted ``hash()``: vocabulary ids follow the
problems' order, so every process computes the same hashes and the same verdicts.
"""

from __future__ import annotations

import builtins
import keyword
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from codegpt.benchmarks import load_benchmark
from codegpt.errors import DataError
from codegpt.problems import load_problems
from data_prep.dedup import normalise_whitespace

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|[0-9]+|[^\sA-Za-z_0-9]")
LEADING_WORD = re.compile(r"^[A-Za-z_0-9]+")
TRAILING_WORD = re.compile(r"[A-Za-z_0-9]+$")
DOCSTRING = re.compile(r'("""|\'\'\')(.*?)\1', re.S)
BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the n-gram polynomial
ANCHORS = 3                           # identifiers per needle that must all occur in a file
# Names every Python file uses: an n-gram made of these, literals and punctuation says nothing.
COMMON_NAMES = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "cls"}
PROBLEM_FIELDS = ("task_id", "prompt", "canonical_solution")  # what each problem must hold


def tokenize(text: str) -> list[str]:
    """Code tokens: ASCII identifiers, digit runs and single other non-space characters.
    Whitespace is not a token, so normalising whitespace never changes the tokens."""
    return TOKEN.findall(text)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every window of ``n`` consecutive ids (empty when there are fewer):
    sum of ids[i + j] * BASE ** (n - 1 - j), wrapping, computed for all windows at once."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * BASE + ids[j:j + count]
    return acc


def validate_problems(problems: Iterable[dict]) -> list[dict]:
    """Problems given directly as a list, or a ValueError naming the first one that lacks a
    field."""
    problems = list(problems)
    for i, p in enumerate(problems):
        missing = [k for k in PROBLEM_FIELDS
                   if not isinstance(p, dict) or not isinstance(p.get(k), str)]
        if missing:
            tid = p.get("task_id", "?") if isinstance(p, dict) else "?"
            raise ValueError(f"problem {i} ({tid}) lacks string field(s) {missing}; each "
                             f"problem needs task_id, prompt and canonical_solution")
    if not problems:
        raise ValueError("no problems to decontaminate against; pass a non-empty jsonl")
    return problems


def docstrings(prompt: str) -> list[str]:
    """The text inside every triple-quoted string of a prompt, as written in the source
    (escapes and all), since a copied file contains the source text, not the string value."""
    return [m.group(2) for m in DOCSTRING.finditer(prompt)]


@dataclass(frozen=True)
class Needle:
    """A normalised string whose presence in a file marks it contaminated."""
    order: int                # position in the checking order (solutions first)
    kind: str                 # "docstring" or "solution"
    task: int                 # index into the problems
    text: str
    anchors: tuple[str, ...]  # identifiers that every file containing ``text`` must contain


def interior_tokens(needle: str) -> list[str]:
    """Tokens of a needle that any file containing it also contains as whole tokens: all but
    those of its leading / trailing word-character run, which a file may extend (``x`` + ``1a``
    tokenises as ``x1a``)."""
    lead, trail = LEADING_WORD.search(needle), TRAILING_WORD.search(needle)
    lo = lead.end() if lead else 0
    hi = trail.start() if trail else len(needle)
    return tokenize(needle[lo:hi]) if lo < hi else []


def choose_anchors(needle: str, k: int = ANCHORS) -> tuple[str, ...]:
    """The k longest distinct identifiers of the needle's interior: rare enough that a file
    holding all of them is worth a substring search."""
    words = [t for t in dict.fromkeys(interior_tokens(needle)) if t[0].isalpha() or t[0] == "_"]
    return tuple(sorted(words, key=lambda w: (-len(w), w))[:k])


def benchmark_problems(benchmarks: Iterable[str], sources: dict) -> tuple[list[dict], dict]:
    """The problems (with a canonical solution) of each named benchmark found on this machine,
    tagged with its name, in benchmark then task order; and per benchmark its number of
    problems, or why it is not covered. A problem another benchmark already holds (HumanEval+
    repeats HumanEval's prompts) is kept once. Never reaches the network."""
    out: list[dict] = []
    coverage: dict[str, object] = {}
    seen: set[tuple[str, str]] = set()
    for name in benchmarks:
        try:
            problems = load_benchmark(name, sources.get(name, ""), offline=True)
        except DataError as e:
            coverage[name] = f"not covered: {e}"[:400]
            log.warning("decontamination: %s", coverage[name])
            continue
        for p in problems.values():
            key = (p["prompt"], p.get("canonical_solution"))
            if isinstance(key[1], str) and key not in seen:
                seen.add(key)
                out.append({**p, "benchmark": name})
        coverage[name] = len(problems)
    if not out:
        raise DataError("decontamination has no benchmark to check against: "
                        + "; ".join(f"{k}: {v}" for k, v in coverage.items()))
    return out, coverage


class Decontaminator:
    """Flags files that contain a benchmark problem; ``check(text)`` gives the reason or None."""

    def __init__(self, ngram: int = 13, problems: Iterable[dict] | None = None,
                 problems_path: str | Path | None = None, min_chars: int = 50,
                 min_ngram_names: int = 3, benchmarks: Iterable[str] | None = None,
                 sources: dict | None = None):
        """ngram: tokens in a shared sequence that mark a file (0 switches that test off).
        problems: dicts with task_id, prompt, canonical_solution; else read from
        problems_path (jsonl / jsonl.gz), else HumanEval's file, in task order
        (``codegpt.problems.load_problems``: a DataError for a missing or malformed file).
        min_chars: shortest normalised
        docstring or solution that is searched for as a substring. min_ngram_names: distinct
        names (see the module docstring) a benchmark n-gram needs to count. benchmarks: instead
        of one problem set, the problems of these named benchmarks (``benchmark_problems``),
        each from ``sources[NAME]`` or its place on this machine; ``coverage`` says which were
        found. A reason names the problem's benchmark (``mbpp_solution:Mbpp/11``)."""
        if ngram < 0:
            raise ValueError(f"ngram must be >= 0 (0 disables the n-gram test), got {ngram}")
        self.coverage: dict[str, object] = {}
        if problems is not None:
            self.problems = validate_problems(problems)
        elif benchmarks is not None and problems_path is None:
            self.problems, self.coverage = benchmark_problems(benchmarks, sources or {})
        else:
            self.problems = list(load_problems(problems_path, fields=PROBLEM_FIELDS).values())
        self.prefixes = [str(p.get("benchmark", "humaneval")).replace("-", "_")
                         for p in self.problems]
        self.ngram, self.min_chars, self.min_ngram_names = ngram, min_chars, min_ngram_names
        self.task_ids = [str(p["task_id"]) for p in self.problems]
        self.needles = self._build_needles()
        self._by_anchor: dict[str, list[Needle]] = {}
        self._always: list[Needle] = []
        for nd in self.needles:
            (self._by_anchor.setdefault(nd.anchors[0], []) if nd.anchors
             else self._always).append(nd)
        self._anchor_keys = frozenset(self._by_anchor)
        self._build_ngrams()
        log.info("decontamination against %d problems: %d substring needles, %d distinct "
                 "%d-grams", len(self.problems), len(self.needles), len(self._keys), ngram)

    # --- construction -----------------------------------------------------------------------

    def _build_needles(self) -> list[Needle]:
        """Solutions first, then docstrings, each in problem order: the order of ``check``."""
        out = []
        for kind in ("solution", "docstring"):
            for i, p in enumerate(self.problems):
                texts = docstrings(p["prompt"]) if kind == "docstring" else [p["canonical_solution"]]
                for t in texts:
                    norm = normalise_whitespace(t)
                    if norm and len(norm) >= self.min_chars:
                        out.append(Needle(len(out), kind, i, norm, choose_anchors(norm)))
        return out

    def _build_ngrams(self) -> None:
        """Vocabulary, and the sorted hashes of every informative n-gram of prompt + solution
        with the first problem that has each and its ids (to confirm a hit exactly)."""
        seqs = [tokenize(normalise_whitespace(p["prompt"] + p["canonical_solution"]))
                for p in self.problems]
        vocab: dict[str, int] = {}
        for seq in seqs:  # ids in order of first use: the same in every process
            for tok in seq:
                vocab.setdefault(tok, len(vocab) + 1)
        self.vocab = vocab
        first: dict[int, tuple[int, tuple[int, ...]]] = {}
        if self.ngram:
            for i, seq in enumerate(seqs):
                ids = np.array([vocab[t] for t in seq], dtype=np.uint64)
                for j, h in enumerate(ngram_hashes(ids, self.ngram).tolist()):
                    if h not in first and self._informative(seq[j:j + self.ngram]):
                        first[h] = (i, tuple(ids[j:j + self.ngram].tolist()))
        keys = sorted(first)
        self._keys = np.array(keys, dtype=np.uint64)
        self._grams = [first[k] for k in keys]

    def _informative(self, gram: list[str]) -> bool:
        """Whether an n-gram names enough things to be evidence of a copy."""
        names = {t for t in gram if len(t) > 1 and not t[0].isdigit() and t.isidentifier()
                 and t not in COMMON_NAMES}
        return len(names) >= self.min_ngram_names

    # --- checking ---------------------------------------------------------------------------

    def check(self, text: str) -> str | None:
        """"humaneval_solution:<task_id>", "humaneval_docstring:<task_id>",
        "humaneval_ngram:<task_id>" (the first that matches), or None for a clean file."""
        norm = normalise_whitespace(text)
        tokens = tokenize(norm)
        hit = self._substring_hit(norm, tokens)
        if hit is not None:
            return f"{self.prefixes[hit.task]}_{hit.kind}:{self.task_ids[hit.task]}"
        task = self._ngram_hit(tokens)
        if task is not None:
            return f"{self.prefixes[task]}_ngram:{self.task_ids[task]}"
        return None

    def _substring_hit(self, norm: str, tokens: list[str]) -> Needle | None:
        """The first needle (solutions before docstrings, problem order) inside the text."""
        present = set(tokens)
        candidates = list(self._always)
        for anchor in present & self._anchor_keys:
            candidates.extend(self._by_anchor[anchor])
        found = [nd for nd in candidates
                 if all(a in present for a in nd.anchors[1:]) and nd.text in norm]
        return min(found, key=lambda nd: nd.order) if found else None

    def _ngram_hit(self, tokens: list[str]) -> int | None:
        """Index of the first problem (in problem order) sharing an n-gram with the tokens."""
        if not self.ngram or len(tokens) < self.ngram or not len(self._keys):
            return None
        get = self.vocab.get
        ids = np.fromiter((get(t, 0) for t in tokens), dtype=np.uint64, count=len(tokens))
        hashes = ngram_hashes(ids, self.ngram)
        pos = np.searchsorted(self._keys, hashes)
        pos[pos == len(self._keys)] = 0
        tasks = []
        for j in np.flatnonzero(self._keys[pos] == hashes).tolist():
            task, gram = self._grams[pos[j]]
            if tuple(ids[j:j + self.ngram].tolist()) == gram:  # not a hash collision
                tasks.append(task)
        return min(tasks) if tasks else None
