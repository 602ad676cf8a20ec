"""Codex-S fine-tuning pairs (``codegpt sft-data``): standalone functions as (prompt, completion)
in HumanEval's layout.

Reads data prep's documents (``data_dir``: the parquet shards of ``codegpt prep``, through
``codegpt.documents``) and, optionally, a user's JSONL files of problems in human-eval / MBPP
style (``extra_jsonl``), and writes to ``out_dir``:

- ``train.jsonl`` and ``val.jsonl``: the pairs (``codegpt.pairs``, the format fine-tuning reads),
  with ``test`` and ``entry_point`` where the pair is tested, and ``source``, ``id``,
  ``repo_name``, ``path``; split by repository with ``codegpt.documents.split_repositories``;
- ``stats.json``: the funnel (candidates, kept, tested, untested, rejected by reason);
- ``rejected/REASON.jsonl``: a few rejected candidates per reason, to inspect;
- ``config.yaml``: the resolved config.

Codex-S was fine-tuned on functions that stand on their own, shaped like HumanEval problems. A
*candidate* is every function defined directly at module level of a document (and every method
of a module-level class: rejected as ``method`` unless ``methods`` is on) and every row of the
user's JSONL files. Each candidate becomes a pair or is rejected with exactly one reason, the
first that applies, in this order:

``method``, ``async`` (running it needs an event loop), ``no_docstring``, ``decorated`` (a
decorator other than the trivial ones in ``TRIVIAL_DECORATORS``, which are dropped),
``method_uses_self`` (the method reads its first parameter, ``super`` or ``__class__``),
``odd_layout`` (the docstring shares a line with code), ``global_statement`` (``global`` or
``nonlocal`` anywhere in it), ``syntax``, ``uses_module_global`` (a name the module binds other
than by a plain absolute import directly in its body: a constant, a class, another function, a
relative import), ``uses_unimported_name`` (a name that is neither builtin nor bound by the
module: a star import, a module never imported), ``too_short`` / ``too_long`` (non-blank lines
of the completion, characters of the pair), ``humaneval_solution`` / ``humaneval_docstring`` /
``humaneval_ngram`` (data prep's ``Decontaminator`` on prompt + completion), ``exact_duplicate``
(the whitespace-normalised prompt + completion seen before), ``doctest_failed`` (its own doctest
examples fail in the sandbox) or ``test_failed`` (a user row's test fails).

The pair, sliced from the source text with ``ast`` line/column offsets (a method is dedented to
column 0 and, unless static, loses its first parameter): the prompt is the imports the function
uses (only its names, one line per import statement of the module, in their order), then the
signature and the docstring as written; the completion is the rest of the function, from the
line after the docstring to its end. Self-contained is checked with ``symtable`` on the function
alone: every name it looks up at module level must be a builtin, the function itself or a name
its prompt imports.

Functions whose docstrings hold doctest examples (``>>>``) are the tested subset, as Codex-S
had: the pair's ``test`` is a HumanEval-style ``check(candidate)`` that runs the examples
against the candidate, and it is run in the sandbox against the function's own body before the
pair is kept; user rows with a ``test`` are run the same way.
"""

from __future__ import annotations

import ast
import builtins
import io
import logging
import random
import symtable
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from tqdm import tqdm

from codegpt.config import dump_yaml, setting
from codegpt.documents import read_documents, repository_bytes, split_repositories, utf8_size
from codegpt.errors import DataError
from codegpt.io import atomic_write_json, atomic_write_text
from codegpt.outputs import writing_aside
from codegpt.pairs import SPLIT_FILES, pairs_jsonl, read_rows
from codegpt.sandbox import Program, isolation_method, run_programs
from data_prep.config import DecontamConfig
from data_prep.decontam import Decontaminator
from data_prep.dedup import exact_hash

log = logging.getLogger(__name__)

BUILTINS = frozenset(dir(builtins))
# Decorators that leave a standalone function's behaviour as it is (or only cache it): dropped.
TRIVIAL_DECORATORS = frozenset({
    "functools.lru_cache", "lru_cache", "functools.cache", "cache", "typing.final", "final",
    "typing.no_type_check", "no_type_check"})
METHOD_DECORATORS = frozenset({"staticmethod", "classmethod"})
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
          ast.SetComp, ast.DictComp, ast.GeneratorExp)
DOC_COLUMNS = ("id", "repo_name", "path", "text")
SNIPPET_CHARS = 2000
DETAIL_CHARS = 300

# The test of a pair whose docstring has doctest examples: they run against the candidate.
DOCTEST_CHECK = '''def check(candidate):
    import doctest
    globs = dict(globals())
    globs[{entry!r}] = candidate
    test = doctest.DocTestParser().get_doctest({doc!r}, globs, {entry!r}, None, 0)
    failed, attempted = doctest.DocTestRunner(verbose=False).run(test)
    assert attempted > 0 and failed == 0, f"{{failed}} of {{attempted}} examples failed"
'''


@dataclass
class SftDataConfig:
    data_dir: str = "runs/data/default"  # data prep's output; "" for extra_jsonl alone
    out_dir: str = "runs/sft/default"    # train.jsonl, val.jsonl, stats.json, rejected/
    extra_jsonl: list[str] = field(default_factory=list)  # the user's human-eval/MBPP-style rows
    # share of the pairs' bytes held out, whole repositories
    val_fraction: float = setting(0.05, ge=0, lt=1)
    seed: int = setting(0, ge=0, lt=2**32)  # the split and the order of the pairs in each file
    methods: bool = False                # also methods (dedented, self dropped) where well-defined
    min_body_lines: int = setting(2, ge=1)  # non-blank lines of the completion
    max_body_lines: int = setting(60, ge=1)
    max_chars: int = setting(4000, ge=1)    # characters of prompt + completion
    doctest_timeout: float = setting(5.0, gt=0)  # seconds per function's doctests in the sandbox
    workers: int = setting(0, ge=0)      # programs run in parallel (0: the sandbox's default)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    reject_samples: int = setting(5, ge=0)  # rejected candidates kept per reason in rejected/

    STAGE = "sft-data"

    def __post_init__(self) -> None:
        if self.min_body_lines > self.max_body_lines:
            raise ValueError(f"need min_body_lines <= max_body_lines, got "
                             f"min_body_lines={self.min_body_lines}, "
                             f"max_body_lines={self.max_body_lines}")
        if not self.data_dir and not self.extra_jsonl:
            raise ValueError("nothing to read: set data_dir (data prep's output) or extra_jsonl")
        if not self.out_dir:
            raise ValueError("out_dir is empty: name the folder to write the pairs to")


class Document(NamedTuple):
    id: str
    repo_name: str
    path: str
    text: str


@dataclass
class Pair:
    prompt: str
    completion: str
    id: str
    repo_name: str
    path: str
    source: str                      # "corpus" (a function of a document) or "jsonl"
    test: str | None = None          # defines check(candidate), human-eval style
    entry_point: str | None = None

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Rejection:
    reason: str
    detail: str
    id: str
    repo_name: str
    path: str
    text: str


Candidate = Pair | Rejection


class Reject(Exception):
    """A check's verdict: the candidate is rejected for ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# --- one document's functions --------------------------------------------------------------

def source_lines(text: str) -> list[str]:
    """The lines as ``ast`` numbers them (\\n, \\r\\n and \\r end a line; form feeds do not)."""
    return io.StringIO(text, newline="").readlines()


def function_candidates(tree: ast.Module) -> Iterator[tuple[ast.AST, ast.ClassDef | None]]:
    """(function, None) for module-level functions, (method, class) for module-level classes'
    methods, in source order."""
    for node in tree.body:
        if isinstance(node, FUNCTIONS):
            yield node, None
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, FUNCTIONS):
                    yield sub, node


def document_candidates(doc: Document, cfg: SftDataConfig) -> list[Candidate] | None:
    """Every candidate function of a document as a pair or a rejection; None when the document
    does not parse (it then has no candidates)."""
    try:
        tree = parse_quietly(doc.text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    lines = source_lines(doc.text)
    module = ModuleNames(tree)
    out: list[Candidate] = []
    for node, owner in function_candidates(tree):
        name = f"{owner.name}.{node.name}" if owner else node.name
        cid = f"{doc.id}:{name}:L{node.lineno}"
        try:
            prompt, completion, test = function_pair(node, owner, lines, module, cfg)
        except Reject as r:
            text = "".join(lines[node.lineno - 1:node.end_lineno])
            out.append(Rejection(r.reason, r.detail, cid, doc.repo_name, doc.path, text))
            continue
        out.append(Pair(prompt, completion, cid, doc.repo_name, doc.path, "corpus", test,
                        node.name if test else None))
    return out


def function_pair(node, owner: ast.ClassDef | None, lines: list[str], module: ModuleNames,
                  cfg: SftDataConfig) -> tuple[str, str, str | None]:
    """(prompt, completion, doctest check or None) of a candidate, or Reject."""
    if owner is not None and not cfg.methods:
        raise Reject("method", f"{owner.name}.{node.name}")
    if isinstance(node, ast.AsyncFunctionDef):
        raise Reject("async")
    if not ast.get_docstring(node, clean=False):
        raise Reject("no_docstring")
    drop_first = method_binding(node, owner)
    header, docstring, body = slice_function(node, lines, drop_first)
    if any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(node)):
        raise Reject("global_statement")
    imports = module.imports_for(module_level_names(header + docstring + body, node.name))
    prompt = imports + header + docstring
    check_length(prompt, body, cfg)
    standalone = parse_or_reject(prompt + body)
    if ">>>" not in docstring:
        return prompt, body, None
    func = standalone.body[-1]
    return prompt, body, DOCTEST_CHECK.format(entry=func.name,
                                              doc=ast.get_docstring(func, clean=False))


def decorator_name(node: ast.expr) -> str:
    return ast.unparse(node.func if isinstance(node, ast.Call) else node)


def method_binding(node, owner: ast.ClassDef | None) -> bool:
    """Whether the function loses its first parameter (a method's self or cls), or Reject when
    its decorators change what it does, or it needs its instance or class."""
    kept = [n for n in map(decorator_name, node.decorator_list) if n not in TRIVIAL_DECORATORS]
    allowed = METHOD_DECORATORS if owner is not None else frozenset()
    if len(kept) > 1 or any(n not in allowed for n in kept):
        raise Reject("decorated", ", ".join(kept))
    if owner is None:
        return False
    params = node.args.posonlyargs + node.args.args
    drop = "staticmethod" not in kept and bool(params)
    forbidden = {"super", "__class__"} | ({params[0].arg} if drop else set())
    used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & forbidden
    if used:
        raise Reject("method_uses_self", ", ".join(sorted(used)))
    return drop


def slice_function(node, lines: list[str], drop_first: bool) -> tuple[str, str, str]:
    """(signature, docstring, body after it) as written, each a run of whole lines ending in
    "\\n", dedented to the def's column; ``drop_first`` removes the first parameter."""
    doc = node.body[0]
    before = utf8_slice(lines[doc.lineno - 1], 0, doc.col_offset)
    after = utf8_slice(lines[doc.end_lineno - 1], doc.end_col_offset, None).strip()
    if before.strip() or (after and not after.startswith("#")):
        raise Reject("odd_layout", "the docstring shares a line with code")
    own = [line.rstrip("\r\n") + "\n" for line in lines[node.lineno - 1:node.end_lineno]]
    h, d = doc.lineno - node.lineno, doc.end_lineno - node.lineno + 1
    header, docstring, body = own[:h], own[h:d], own[d:]
    if drop_first:
        header = drop_first_parameter(header, node)
    indent = own[0][:len(own[0]) - len(own[0].lstrip())]
    return tuple("".join(dedent(line, indent) for line in part)  # type: ignore[return-value]
                 for part in (header, docstring, body))


def utf8_slice(line: str, start: int, end: int | None) -> str:
    """``line`` between two of ast's column offsets (which count UTF-8 bytes)."""
    return line.encode("utf-8", "surrogatepass")[start:end].decode("utf-8", "surrogatepass")


def dedent(line: str, indent: str) -> str:
    return line[len(indent):] if line.startswith(indent) else line


def drop_first_parameter(header: list[str], node) -> list[str]:
    """The signature's lines without its first parameter (and the comma after it); a line left
    blank is dropped."""
    arg = (node.args.posonlyargs + node.args.args)[0]
    if arg.lineno != arg.end_lineno:
        raise Reject("odd_layout", "the first parameter spans lines")
    i = arg.lineno - node.lineno
    line = header[i].encode("utf-8", "surrogatepass")
    rest = line[arg.end_col_offset:].lstrip(b" \t")
    if rest.startswith(b","):
        rest = rest[1:].lstrip(b" \t")
    new = (line[:arg.col_offset] + rest).decode("utf-8", "surrogatepass")
    return header[:i] + ([new] if new.strip() else []) + header[i + 1:]


def parse_quietly(source: str) -> ast.Module:
    """``ast.parse`` without the warnings other people's code raises (invalid escape sequences
    and the like), which would flood the console for a corpus of thousands of files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def parse_or_reject(source: str) -> ast.Module:
    try:
        return parse_quietly(source)
    except (SyntaxError, ValueError, RecursionError) as e:
        raise Reject("syntax", str(e)[:DETAIL_CHARS]) from None


def module_level_names(source: str, name: str) -> set[str]:
    """The names a function (its source alone) looks up at module level, in any of its scopes,
    its defaults and annotations included; its own name (recursion) is not counted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            top = symtable.symtable(source, "<function>", "exec")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise Reject("syntax", str(e)[:DETAIL_CHARS]) from None
    found, stack = set(), [top]
    while stack:
        table = stack.pop()
        found.update(s.get_name() for s in table.get_symbols()
                     if s.is_global() and s.is_referenced())
        stack.extend(table.get_children())
    return found - {name}


def check_length(prompt: str, completion: str, cfg: SftDataConfig) -> None:
    lines = sum(1 for line in completion.splitlines() if line.strip())
    if lines < cfg.min_body_lines:
        raise Reject("too_short", f"{lines} body lines")
    if lines > cfg.max_body_lines or len(prompt) + len(completion) > cfg.max_chars:
        raise Reject("too_long", f"{lines} body lines, {len(prompt) + len(completion)} chars")


class ModuleNames:
    """What a module binds at module level: the imports a prompt can carry (absolute ``import``
    and ``from`` statements directly in the module body) and every other binding (assignments,
    functions, classes, imports inside if/try, relative, ``__future__`` and star imports)."""

    def __init__(self, tree: ast.Module):
        self.carried: dict[str, list[tuple[int, ast.alias]]] = defaultdict(list)
        self.statements: dict[int, ast.stmt] = {}
        rest = []
        for i, stmt in enumerate(tree.body):
            if not carryable(stmt):
                rest.append(stmt)
                continue
            self.statements[i] = stmt
            for alias in stmt.names:
                self.carried[bound_name(alias)].append((i, alias))
        self.other = bindings(rest)

    def imports_for(self, names: set[str]) -> str:
        """The import lines a function using ``names`` needs (then two blank lines), or Reject
        when it uses a name the module binds otherwise, or one bound nowhere."""
        module = sorted(n for n in names if n in self.other)
        if module:
            raise Reject("uses_module_global", ", ".join(module[:8]))
        missing = sorted(n for n in names if n not in self.carried and n not in BUILTINS)
        if missing:
            raise Reject("uses_unimported_name", ", ".join(missing[:8]))
        used: dict[int, list[int]] = defaultdict(list)
        for n in names & self.carried.keys():
            for i, alias in self.carried[n]:
                used[i].append(id(alias))
        lines = []
        for i in sorted(used):
            stmt = self.statements[i]
            aliases = [a for a in stmt.names if id(a) in used[i]]
            node = (ast.Import(names=aliases) if isinstance(stmt, ast.Import) else
                    ast.ImportFrom(module=stmt.module, names=aliases, level=0))
            lines.append(ast.unparse(node) + "\n")
        return "".join(lines) + "\n\n" if lines else ""


def carryable(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Import):
        return True
    return (isinstance(stmt, ast.ImportFrom) and stmt.level == 0
            and stmt.module != "__future__" and all(a.name != "*" for a in stmt.names))


def bound_name(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def bindings(stmts: Iterable[ast.stmt]) -> set[str]:
    """Every name the statements bind in their own scope (not inside functions, classes,
    lambdas or comprehensions); a star import binds "*"."""
    names: set[str] = set()
    stack: list[ast.AST] = list(stmts)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            stack.extend(node.decorator_list)
            continue
        if isinstance(node, SCOPES):
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(bound_name(a) for a in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        stack.extend(ast.iter_child_nodes(node))
    return names


# --- the user's JSONL ----------------------------------------------------------------------

def read_jsonl_candidates(path: str | Path) -> list[Candidate]:
    """Rows of a human-eval / MBPP-style JSONL file: ``prompt`` with ``completion`` or
    ``canonical_solution``, optional ``test`` (defining ``check(candidate)``), ``entry_point``
    and ``task_id``. Its file name is the rows' repository. A malformed row is a DataError
    naming the file and line; a row whose prompt + completion does not parse is rejected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"extra_jsonl file {path} does not exist")
    return [row_candidate(row, path, lineno) for lineno, row in read_rows(path)]



def row_candidate(row: dict, path: Path, lineno: int) -> Candidate:
    cid = str(row.get("task_id") or f"{path.name}:{lineno}")
    test = row.get("test") or None
    entry = row.get("entry_point") or None
    try:
        parse_or_reject(row["prompt"] + row["completion"])
    except Reject as r:
        return Rejection(r.reason, r.detail, cid, path.name, str(path),
                         row["prompt"] + row["completion"])
    return Pair(row["prompt"], row["completion"], cid, path.name, str(path), "jsonl", test,
                entry)


# --- the builder -----------------------------------------------------------------------------

class Funnel:
    """Every candidate counted once: kept, or rejected with one reason (a few samples each)."""

    def __init__(self, samples: int):
        self.candidates: Counter = Counter()   # by source
        self.rejected: Counter = Counter()     # by reason
        self.samples: dict[str, list[Rejection]] = defaultdict(list)
        self.documents: Counter = Counter()    # read, unparsable
        self.k = samples

    def reject(self, r: Rejection) -> None:
        self.rejected[r.reason] += 1
        if len(self.samples[r.reason]) < self.k:
            self.samples[r.reason].append(r)


class Screen:
    """HumanEval decontamination (data prep's rules) and exact dedup across every source."""

    def __init__(self, cfg: DecontamConfig):
        self.decontam = (Decontaminator(ngram=cfg.ngram, benchmarks=cfg.benchmarks,
                                        sources=cfg.sources) if cfg.enabled else None)
        self.seen: set[bytes] = set()

    def __call__(self, item: Candidate) -> Candidate:
        if isinstance(item, Rejection):
            return item
        text = item.prompt + item.completion
        hit = self.decontam.check(text) if self.decontam else None
        key = None if hit else exact_hash(text)
        if hit or key in self.seen:
            reason = hit.split(":")[0] if hit else "exact_duplicate"
            return Rejection(reason, hit or "", item.id, item.repo_name, item.path, text)
        self.seen.add(key)
        return item


def build_sft_data(cfg: SftDataConfig) -> dict:
    """Build the pairs, write them with the funnel, and return the funnel (stats.json). The
    folder is written aside and swapped in whole (``codegpt.outputs.writing_aside``)."""
    with writing_aside(cfg.out_dir, "sft-data") as out:
        return _build(cfg, out)


def _build(cfg: SftDataConfig, out: Path) -> dict:
    start = time.time()
    rows = [c for path in cfg.extra_jsonl for c in read_jsonl_candidates(path)]
    docs = [Document(*d) for d in read_documents(cfg.data_dir, DOC_COLUMNS)] if cfg.data_dir else []
    screen, funnel = Screen(cfg.decontam), Funnel(cfg.reject_samples)
    pairs: list[Pair] = []

    def take(items: Iterable[Candidate], source: str) -> None:
        for item in map(screen, items):
            funnel.candidates[source] += 1
            if isinstance(item, Rejection):
                funnel.reject(item)
            else:
                pairs.append(item)

    take(rows, "jsonl")
    for doc in tqdm(docs, desc="sft-data", unit="doc", disable=None):
        funnel.documents["read"] += 1
        found = document_candidates(doc, cfg)
        if found is None:
            funnel.documents["unparsable"] += 1
        take(found or (), "corpus")
    kept, sandbox = run_tests(pairs, cfg, funnel)
    stats = summarize(funnel, kept, cfg, sandbox)
    write_outputs(cfg, out, kept, funnel, stats)
    stats["seconds"] = round(time.time() - start, 1)
    atomic_write_json(out / "stats.json", stats)
    log.info("sft-data: %d candidates, %d kept (%d tested) in %.0f s", stats["candidates"],
             stats["kept"], stats["tested"], stats["seconds"])
    return stats


def run_tests(pairs: list[Pair], cfg: SftDataConfig, funnel: Funnel) -> tuple[list[Pair], str]:
    """The pairs whose test passes against their own completion in the sandbox, and those
    without a test; a failing one is rejected (doctest_failed / test_failed)."""
    tested = [p for p in pairs if p.test]
    if not tested:
        return pairs, "not needed"
    programs = [Program(p.prompt + p.completion, p.test, p.entry_point) for p in tested]
    log.info("running %d pairs' tests in the sandbox", len(programs))
    results = run_programs(programs, timeout=cfg.doctest_timeout, workers=cfg.workers or None,
                           progress=True)
    failed = {id(p): r for p, r in zip(tested, results) if not r.passed}
    for p in tested:
        if id(p) in failed:
            reason = "doctest_failed" if p.source == "corpus" else "test_failed"
            funnel.reject(Rejection(reason, f"{failed[id(p)].status}: "
                                    f"{failed[id(p)].detail}"[:DETAIL_CHARS], p.id,
                                    p.repo_name, p.path, p.prompt + p.completion))
    return [p for p in pairs if id(p) not in failed], isolation_method()


def summarize(funnel: Funnel, kept: list[Pair], cfg: SftDataConfig, sandbox: str) -> dict:
    """The funnel; every candidate is kept or rejected with one reason, which is checked."""
    candidates = sum(funnel.candidates.values())
    rejected = sum(funnel.rejected.values())
    tested = sum(1 for p in kept if p.test)
    stats = {
        "documents": {"read": funnel.documents["read"],
                      "unparsable": funnel.documents["unparsable"]},
        "candidates": candidates,
        "candidates_by_source": dict(sorted(funnel.candidates.items())),
        "kept": len(kept), "tested": tested, "untested": len(kept) - tested,
        "rejected": dict(sorted(funnel.rejected.items())),
        "rejected_total": rejected,
        "accounted": candidates == len(kept) + rejected,
        "sandbox": sandbox,
    }
    if not stats["accounted"]:
        raise RuntimeError(f"accounting error: {candidates} candidates but {len(kept)} kept + "
                           f"{rejected} rejected")
    return stats


def write_outputs(cfg: SftDataConfig, out: Path, kept: list[Pair], funnel: Funnel,
                  stats: dict) -> None:
    """train.jsonl / val.jsonl (split by repository on the pairs' bytes, each in a seeded
    order), rejected/REASON.jsonl, config.yaml, in ``out``; stats gains the splits' sizes."""
    sizes = repository_bytes((p.repo_name, utf8_size(p.prompt + p.completion)) for p in kept)
    val_repos = split_repositories(sizes, cfg.val_fraction, cfg.seed)
    rng = random.Random(cfg.seed)
    stats["splits"] = {}
    for split in ("train", "val"):
        part = [p for p in kept if (p.repo_name in val_repos) == (split == "val")]
        rng.shuffle(part)
        atomic_write_text(out / SPLIT_FILES[split], pairs_jsonl(p.record() for p in part))
        stats["splits"][split] = {
            "pairs": len(part), "tested": sum(1 for p in part if p.test),
            "repositories": len({p.repo_name for p in part}),
            "bytes": sum(utf8_size(p.prompt + p.completion) for p in part)}
    for reason, recs in sorted(funnel.samples.items()):
        atomic_write_text(out / "rejected" / f"{reason}.jsonl", pairs_jsonl(
            {**asdict(r), "text": r.text[:SNIPPET_CHARS]} for r in recs))
    dump_yaml(cfg, out / "config.yaml")



def funnel_lines(stats: dict) -> list[str]:
    """The funnel as lines for the CLI to print."""
    docs, by_source = stats["documents"], stats["candidates_by_source"]
    sources = ", ".join(f"{k} {v:,}" for k, v in by_source.items())
    lines = [f"documents  {docs['read']:>9,} read, {docs['unparsable']:,} unparsable",
             f"candidates {stats['candidates']:>9,} ({sources})"]
    lines += [f"  - {reason:<24s} {n:>9,}" for reason, n in stats["rejected"].items()]
    lines.append(f"kept       {stats['kept']:>9,} pairs: {stats['tested']:,} tested, "
                 f"{stats['untested']:,} untested")
    lines += [f"{split:<10s} {s['pairs']:>9,} pairs ({s['tested']:,} tested) from "
              f"{s['repositories']:,} repositories, {s['bytes'] / 1e6:.2f} MB"
              for split, s in stats["splits"].items()]
    return lines
