"""A pipeline run folder read into plain data for the report: one reader per stage.

The stages, their folders and titles are ``codegpt.stages``'s. Each stage's reader returns None
when the stage did not run (its folder or its output file is absent); a file that is there but
cannot be read, or holds a value the report uses of an unexpected type (checked where it is read),
is a ReportError recorded in ``Run.unreadable``, and its section says why, so a partial or killed
run still gets a report. Any other exception is a bug and propagates. A stage whose marker
(``codegpt-output.json``, the one the next stage checks) says it did not finish is recorded in
``Run.incomplete`` and shown as incomplete, whatever of it can be read. Nothing here formats or
escapes: every string stays as the run wrote it (untrusted) until ``page`` escapes it.

The layout (what ``make reference`` writes; any part may be missing)::

    RUN/data/stats.json              data prep's funnel
    RUN/tokenizer/                   tokenizer.json, tokenizer_meta.json
    RUN/tokens/meta.json             token shards
    RUN/train/  RUN/sft/             metrics.jsonl, config.yaml, status.json
    RUN/sft-data/stats.json          the Codex-S pairs' funnel
    RUN/humaneval/MODEL/TEMP/        results.json, samples.jsonl (TEMP named like t0.2)
    RUN/humaneval/results.json       or one evaluation, without MODEL/TEMP folders
    RUN/mbpp/ RUN/humaneval-plus/ RUN/mbpp-plus/   the other benchmarks, laid out the same
    RUN/timings.json                 optional: seconds and status per stage, commit, machine
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codegpt.benchmarks import load_benchmark
from codegpt.infilling import SETS as INFILLING_SETS, load_infilling
from codegpt.errors import CodegptError, DataError, EvalError, ReportError, ShardError
from codegpt.eval.humaneval import summarize
from codegpt.eval.samples import read_samples
from codegpt.outputs import completion_problem
from codegpt.stages import EVALUATIONS, MODELS, STAGES, Stage, stage
from codegpt.tokenizer.bpe import META_FILE, TOKENIZER_FILE, byte_decoder, tokenizer_hash
from codegpt.tokenizer.shards import check_meta
from codegpt.train.metrics import read_metrics

log = logging.getLogger(__name__)

PREP_STAGES = ("read", "filter", "decontam", "dedup")  # data prep's stages, in order
MODEL_ORDER = tuple(MODELS)            # models of an evaluation folder shown first, in order
MEASURE_TOKENS = 20_000_000            # at most this many tokens per split measured for bytes
# the evaluations' stages (one per benchmark) are marked per evaluation folder, not as a whole
EVALUATION = stage("humaneval")        # always shown; another benchmark where the run has it
INFILLING = stage("infilling")         # its problems are an infilling set's

# what a stage's file that is there but cannot be read (or holds values of unexpected types)
# raises: its section says so. Anything else is a bug and propagates.
UNREADABLE = (ReportError, EvalError)


@dataclass
class TrainRun:
    """A training run (pretraining or Codex-S): its curves and summary numbers."""

    folder: str
    rows: list[dict]                          # training steps: step, tokens, loss, lr, ...
    val: list[tuple[int, float, float]]       # (step, tokens, val loss)
    status: dict | None
    config_text: str | None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(tokens, values) of a per-step metric, skipping steps that lack a finite value."""
        pairs = [(r["tokens"], v) for r in self.rows
                 if r.get("tokens") is not None and (v := number(r.get(key))) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def median(self, key: str) -> float | None:
        values = [v for r in self.rows if (v := number(r.get(key))) is not None]
        return statistics.median(values) if values else None

    @property
    def last_val(self) -> float | None:
        return self.val[-1][2] if self.val else None


@dataclass
class Eval:
    """One evaluation: a model at one temperature on one benchmark."""

    benchmark: str                            # its stage's folder: humaneval, mbpp, ...
    model: str
    label: str                                # the temperature folder's name, e.g. t0.2
    temperature: float | None
    results: dict
    samples: list[dict] | None                # None: no samples.jsonl (likelihood only)
    per_problem: dict[str, tuple[int, int]]   # task_id -> (samples, passed)
    pass_curve: list[tuple[int, float]]       # (k, pass@k)
    folder: str = ""                          # where it is in the run folder

    @property
    def name(self) -> str:
        t = f"T={self.temperature:g}" if self.temperature is not None else self.label
        return f"{self.model} {t}".strip()


@dataclass
class Run:
    dir: Path
    timings: dict | None = None
    data: dict | None = None
    tokenizer: dict | None = None
    tokens: dict | None = None
    train: TrainRun | None = None
    sft_data: dict | None = None
    sft: TrainRun | None = None
    evals: list[Eval] = field(default_factory=list)       # every benchmark's, in stage order
    # each benchmark's problems (their prompts for the gallery), {} where unknown
    problems: dict[str, dict[str, dict]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # folder -> why unreadable
    incomplete: dict[str, str] = field(default_factory=dict)  # folder -> why not finished

    def present(self, folder: str) -> bool:
        return (self.dir / folder).is_dir()

    def output(self, name: str) -> object:
        """What the report read of stage ``name`` (a field of this name; an evaluation stage's
        evaluations), None for nothing."""
        bench = stage(name).benchmark
        if bench:
            return self.of(bench) or None
        return getattr(self, name)

    def of(self, benchmark: str) -> list[Eval]:
        """The evaluations of one benchmark."""
        return [e for e in self.evals if e.benchmark == benchmark]

    def skipped(self, folder: str) -> str | None:
        """Why the reference run skipped a stage of this folder (timings.json says), or None."""
        stages = (self.timings or {}).get("stages")
        for key, entry in (stages if isinstance(stages, dict) else {}).items():
            if (key.split("/")[0] == folder and isinstance(entry, dict)
                    and entry.get("status") == "skipped"):
                return str(entry.get("reason") or "skipped")
        return None

    def evaluations(self) -> list[Stage]:
        """The evaluation stages the report shows: HumanEval, and each other benchmark the run
        folder holds or the run skipped."""
        return [s for s in EVALUATIONS if s is EVALUATION or self.present(s.folder)
                or self.skipped(s.folder) is not None]


def number(value) -> float | None:
    """A finite float, or None (metrics write nan/inf as strings; some fields are null)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --- reading and checking a stage's files ------------------------------------------------------
# A value the report uses is checked where it is read: a file holding one of an unexpected type
# is a ReportError naming the file and key, so its stage shows as unreadable. The sections then
# use what they were given without guessing.

def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


KINDS = {"an object": lambda x: isinstance(x, dict), "a list": lambda x: isinstance(x, list),
         "a string": lambda x: isinstance(x, str), "a number": _is_number,
         "a non-negative integer": _is_count}


def expect(value: object, kind: str, file: str, key: str) -> object:
    """``value`` if it is of ``kind`` (a key of KINDS), else a ReportError naming file and key."""
    if not KINDS[kind](value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ReportError(f"{file}: {key} is {shown}, not {kind}")
    return value


def required(obj: dict, key: str, kind: str, file: str, prefix: str = "") -> object:
    if key not in obj:
        raise ReportError(f"{file} lacks '{prefix}{key}'")
    return expect(obj[key], kind, file, prefix + key)


def optional(obj: dict, key: str, kind: str, file: str, prefix: str = "",
             null: bool = False) -> object:
    """``obj[key]`` when it is there (None when it is not, or is null where ``null`` allows)."""
    if key not in obj or (null and obj[key] is None):
        return None
    return expect(obj[key], kind, file, prefix + key)


def _name(path: Path) -> str:
    """How messages name a stage's file: its folder and name."""
    return f"{path.parent.name}/{path.name}"


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path.name} cannot be read: {e}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path.name} is not a JSON object")
    return value


def _optional_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        raise ReportError(f"{_name(path)} cannot be read: {e}") from None


# --- the run -----------------------------------------------------------------------------------

def read_run(run_dir: str | Path) -> Run:
    """Every stage the folder holds; ReportError if it is missing or holds none of them."""
    run = Run(Path(run_dir))
    if not run.dir.is_dir():
        raise ReportError(f"no run folder at {run.dir}")
    if not any(run.present(s.folder) for s in STAGES):
        raise ReportError(f"{run.dir} holds none of the pipeline's stages "
                          f"({', '.join(s.folder + '/' for s in STAGES)}): not a run folder")
    for s in STAGES:  # the marker each stage's output carries
        if not s.benchmark and run.present(s.folder):
            problem = completion_problem(run.dir / s.folder, s.command)
            if problem not in (None, "unmarked"):
                run.incomplete[s.folder] = problem
    try:
        run.timings = _optional_json(run.dir / "timings.json")
    except ReportError as e:
        _record_unreadable(run, "timings.json", e)
    readers = {"data": read_prep_stats, "tokenizer": read_tokenizer,
               "tokens": lambda folder: read_tokens(folder, run.dir / stage("tokenizer").folder),
               "train": read_train_run, "sft_data": read_sft_stats, "sft": read_train_run}
    for name, read in readers.items():
        folder = stage(name).folder
        if name == "data" and folder in run.incomplete:
            continue  # a stats.json there is an earlier run's, not this one's
        try:
            setattr(run, name, read(run.dir / folder))
        except UNREADABLE as e:
            _record_unreadable(run, folder, e)
    run.evals = [e for s in EVALUATIONS for e in read_evals(run, s)]
    for bench in dict.fromkeys(e.benchmark for e in run.evals):
        run.problems[bench] = benchmark_problems(bench, run.of(bench))
    return run


def _record_unreadable(run: Run, where: str, e: CodegptError) -> None:
    log.warning("report: %s: %s", where, e)
    run.unreadable[where] = str(e)


# --- data prep and Codex-S data: the funnels ---------------------------------------------------

def funnel_rows(stats: dict) -> list[tuple[str, str, dict]]:
    """Data prep's rejections as (stage, reason, {files, bytes}), in the order the stages run."""
    order = {step: i for i, step in enumerate(PREP_STAGES)}
    return [(step, reason, v)
            for step, reasons in sorted(stats["rejected"].items(),
                                        key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
            for reason, v in reasons.items()]


def read_prep_stats(folder: Path) -> dict | None:
    """Data prep's stats.json: inputs and kept as {files, bytes}, and rejected by stage and
    reason."""
    path = folder / "stats.json"
    stats = _optional_json(path)
    if stats is None:
        return None
    file = _name(path)

    def counts(obj: dict, key: str) -> None:
        for k in ("files", "bytes"):
            optional(obj, k, "a number", file, f"{key}.")
    for key in ("inputs", "kept"):
        counts(required(stats, key, "an object", file), key)
    for stage_name, reasons in required(stats, "rejected", "an object", file).items():
        expect(reasons, "an object", file, f"rejected.{stage_name}")
        for reason, v in reasons.items():
            counts(expect(v, "an object", file, f"rejected.{stage_name}.{reason}"),
                   f"rejected.{stage_name}.{reason}")
    return stats


def read_sft_stats(folder: Path) -> dict | None:
    """Codex-S data's stats.json: candidates and kept as counts, rejected by reason."""
    path = folder / "stats.json"
    stats = _optional_json(path)
    if stats is None:
        return None
    file = _name(path)
    for key in ("candidates", "kept"):
        required(stats, key, "a number", file)
    for reason, n in required(stats, "rejected", "an object", file).items():
        expect(n, "a number", file, f"rejected.{reason}")
    return stats


# --- tokenizer and token shards ----------------------------------------------------------------

def read_tokenizer(folder: Path) -> dict | None:
    """tokenizer_meta.json, or what tokenizer.json alone tells (its vocabulary size)."""
    if (folder / META_FILE).is_file():
        return read_json(folder / META_FILE)
    if (folder / TOKENIZER_FILE).is_file():
        vocab, added = _vocabulary(folder / TOKENIZER_FILE)
        return {"vocab_size": max([*vocab.values(), *(t["id"] for t in added)]) + 1}
    return None


def _vocabulary(path: Path) -> tuple[dict[str, int], list[dict]]:
    """tokenizer.json's vocabulary (token -> id) and added tokens ({id, content, special})."""
    spec, file = read_json(path), _name(path)
    model = required(spec, "model", "an object", file)
    vocab = required(model, "vocab", "an object", file, "model.")
    for token, i in vocab.items():
        expect(i, "a non-negative integer", file, f"model.vocab[{token!r}]")
    added = optional(spec, "added_tokens", "a list", file) or []
    for j, t in enumerate(added):
        expect(t, "an object", file, f"added_tokens[{j}]")
        required(t, "id", "a non-negative integer", file, f"added_tokens[{j}].")
        required(t, "content", "a string", file, f"added_tokens[{j}].")
    if not vocab and not added:
        raise ReportError(f"{file} holds no tokens")
    return vocab, added


def read_tokens(folder: Path, tokenizer: Path) -> dict | None:
    """meta.json, with each split's bytes per token (of text: the documents' separators not
    counted): from the bytes the shards' meta.json records if it does, else measured on the
    shards with the run's tokenizer (each id's length in bytes, summed; only when that is the
    tokenizer the shards were made with)."""
    path = folder / "meta.json"
    if not path.is_file():
        return None
    meta, file = read_json(path), _name(path)
    for split, info in required(meta, "splits", "an object", file).items():
        key = f"splits.{split}."
        expect(info, "an object", file, key[:-1])
        required(info, "tokens", "a non-negative integer", file, key)
        optional(info, "documents", "a non-negative integer", file, key)
        optional(info, "bytes", "a number", file, key, null=True)
        for j, shard in enumerate(optional(info, "shards", "a list", file, key) or []):
            expect(shard, "an object", file, f"{key}shards[{j}]")
            name = required(shard, "file", "a string", file, f"{key}shards[{j}].")
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ReportError(f"{file}: {key}shards[{j}].file {name!r} is not a path inside "
                                  f"{folder.name}/")
    lengths = None
    for info in meta["splits"].values():
        text_tokens = info["tokens"] - info.get("documents", 0)
        if number(info.get("bytes")) is not None:
            info["bytes_source"] = "recorded"
            info["bytes_per_token"] = info["bytes"] / text_tokens if text_tokens > 0 else None
            continue
        if lengths is None:
            lengths = _token_lengths(tokenizer, meta, path)
            if lengths is None:
                break
        _measure_bytes(folder, meta, info, lengths)
    return meta


def _token_lengths(tokenizer: Path, meta: dict, meta_path: Path) -> np.ndarray | None:
    """Bytes of text per token id (0 for special tokens), or None without the shards'
    tokenizer."""
    file = tokenizer / TOKENIZER_FILE
    try:
        same = file.is_file() and tokenizer_hash(file) == meta.get("tokenizer_hash")
    except OSError as e:
        raise ReportError(f"{_name(file)} cannot be read: {e}") from None
    if not same:
        meta["bytes_note"] = ("not measured: the run's tokenizer/ is absent or is not the one "
                              "the shards were made with")
        return None
    required(meta, "dtype", "a string", _name(meta_path))
    required(meta, "vocab_size", "a non-negative integer", _name(meta_path))
    required(meta, "eot_id", "a non-negative integer", _name(meta_path))
    try:
        check_meta(meta, meta_path)
    except ShardError as e:
        raise ReportError(str(e)) from None
    vocab, added = _vocabulary(file)
    to_byte = byte_decoder()
    size = max([*vocab.values(), *(t["id"] for t in added)]) + 1
    lengths = np.zeros(size, dtype=np.int64)
    for token, i in vocab.items():  # byte-level: one character per byte
        lengths[i] = len(token) if all(c in to_byte for c in token) else len(token.encode())
    for t in added:
        lengths[t["id"]] = 0 if t.get("special") else len(t["content"].encode())
    return lengths


def _measure_bytes(folder: Path, meta: dict, info: dict, lengths: np.ndarray,
                   chunk: int = 1 << 22) -> None:
    """Sum the byte lengths of a split's ids, over at most MEASURE_TOKENS of them."""
    n_bytes = n_tokens = n_eot = 0
    for shard in info.get("shards", []):
        path = folder / shard["file"]
        if n_tokens >= MEASURE_TOKENS:
            continue
        try:
            if path.stat().st_size == 0:
                continue
            ids = np.memmap(path, dtype=meta["dtype"], mode="r")[: MEASURE_TOKENS - n_tokens]
        except (OSError, ValueError) as e:  # missing, or not a whole number of ids
            raise ReportError(f"{folder.name}/{shard['file']} cannot be read: {e}") from None
        for start in range(0, len(ids), chunk):
            part = np.asarray(ids[start: start + chunk], dtype=np.int64)
            if part.max() >= len(lengths):
                raise ReportError(f"{shard['file']} holds ids beyond the tokenizer's vocabulary")
            n_bytes += int(lengths[part].sum())
            n_eot += int((part == meta["eot_id"]).sum())
        n_tokens += len(ids)
    text_tokens = n_tokens - n_eot
    info["bytes_per_token"] = n_bytes / text_tokens if text_tokens > 0 else None
    if n_tokens >= info["tokens"]:
        info.update(bytes=n_bytes, bytes_source="measured")
    else:
        info["bytes_source"] = f"measured on the first {n_tokens:,} tokens"


# --- training runs -----------------------------------------------------------------------------

def read_train_run(folder: Path) -> TrainRun | None:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None
    file = _name(path)
    try:
        records = read_metrics(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{file} cannot be read: {e}") from None
    for i, r in enumerate(records, start=1):
        expect(r, "an object", file, f"record {i}")
        for key in ("step", "tokens"):  # the x axes; the plotted values may be "nan" strings
            optional(r, key, "a number", file, f"record {i}: ", null=True)
    rows = [r for r in records if "loss" in r and number(r.get("step")) is not None]
    steps = [r["step"] for r in rows if number(r.get("tokens")) is not None]
    tokens = [r["tokens"] for r in rows if number(r.get("tokens")) is not None]
    val = []
    for r in records:
        if (v := number(r.get("val_loss"))) is not None and number(r.get("step")) is not None:
            at = float(np.interp(r["step"], steps, tokens)) if steps else float(r["step"])
            val.append((r["step"], at, v))
    status = _optional_json(folder / "status.json")
    config = folder / "config.yaml"
    return TrainRun(folder.name, rows, val, status,
                    read_text(config) if config.is_file() else None)


# --- HumanEval ---------------------------------------------------------------------------------

def read_evals(run: Run, s: Stage = EVALUATION) -> list[Eval]:
    """Every folder under RUN/BENCHMARK/ (the evaluation stage ``s``'s) that holds a
    results.json: MODEL/TEMP/, MODEL/, or the folder itself (one evaluation, shown as model
    "base")."""
    root = run.dir / s.folder
    if not root.is_dir():
        return []
    found = [("base", "", root)] if (root / s.expect).is_file() else []
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        if (model / s.expect).is_file():
            found.append((model.name, "", model))
        found += [(model.name, t.name, t) for t in sorted(model.iterdir())
                  if t.is_dir() and (t / s.expect).is_file()]
    evals = []
    for model, label, folder in found:
        where = str(folder.relative_to(run.dir))
        problem = completion_problem(folder, s.command)
        if problem not in (None, "unmarked"):
            run.incomplete[where] = problem
        try:
            evals.append(read_eval(model, label, folder, s.benchmark))
            evals[-1].folder = f"{where}/"
        except UNREADABLE as e:
            _record_unreadable(run, where, e)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    evals.sort(key=lambda e: (order.get(e.model, len(order)), e.model,
                              e.temperature if e.temperature is not None else math.inf, e.label))
    return evals


def read_eval(model: str, label: str, folder: Path, benchmark: str = EVALUATION.folder) -> Eval:
    path = folder / "results.json"
    results, file = read_json(path), path.name
    for key in ("temperature", "canonical_tokens", "canonical_bytes", "canonical_bits_per_byte",
                "exact_match", "middle_fim_bits_per_byte", "middle_l2r_bits_per_byte"):
        optional(results, key, "a number", file, null=True)
    for key in results:
        if re.fullmatch(r"(base_|reranked_)?pass@\d+", key):
            optional(results, key, "a number", file, null=True)
    for key in ("canonical_per_problem", "middle_fim_per_problem", "middle_l2r_per_problem"):
        for task, info in (optional(results, key, "an object", file, null=True) or {}).items():
            expect(info, "an object", file, f"{key}.{task}")
    m = re.fullmatch(r"t(\d+(?:\.\d+)?)", label)
    temperature = float(m.group(1)) if m else number(results.get("temperature"))
    samples = read_samples(folder / "samples.jsonl") if (folder / "samples.jsonl").is_file() \
        else None
    for i, s in enumerate(samples or [], start=1):  # what reranking compares
        optional(s, "mean_logp", "a number", "samples.jsonl", f"sample {i}: ")
    per_problem: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in samples or []:
        per_problem[s["task_id"]][0] += 1
        per_problem[s["task_id"]][1] += s.get("passed") is True
    if per_problem:
        n_min = min(n for n, _ in per_problem.values())
        ks = sorted({k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= n_min} | {n_min})
        summary = summarize(samples, ks)
        curve = [(k, summary[f"pass@{k}"]) for k in ks]
    else:  # no samples: the pass@k that results.json holds
        curve = sorted((int(k[5:]), x) for k, v in results.items()
                       if re.fullmatch(r"pass@\d+", k) and (x := number(v)) is not None)
    return Eval(benchmark, model, label, temperature, results, samples,
                {t: (n, c) for t, (n, c) in per_problem.items()}, curve)


def benchmark_problems(benchmark: str, evals: list[Eval]) -> dict[str, dict]:
    """A benchmark's problems (their prompts for the gallery): from the local file its results
    name, else its default place on this machine (never the network); {} without them."""
    named = [str(e.results.get("problems_file") or "") for e in evals]
    local = next((f for f in named if f and Path(f).is_file()), "")
    try:
        if benchmark == INFILLING.folder:  # the set its results name, derived or from a file
            sets = [e.results.get("infilling_set") for e in evals]
            name = next((x for x in sets if x in INFILLING_SETS), "single-line")
            return load_infilling(name, local)
        return load_benchmark(benchmark, local, offline=True)
    except DataError as e:
        log.warning("report: %s problems unavailable (%s): no prompts in the gallery",
                    benchmark, e)
        return {}
