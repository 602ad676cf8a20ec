"""The reference run: raw Python files to a HumanEval report in one command.

``codegpt reference configs/reference/cpu.yaml`` (``make reference``) runs every stage of the
pipeline into one folder, each as the ``codegpt`` command a user would type::

    RUN/configs/STAGE.yaml   the config each stage ran with (its section of the reference config
                             over its base config, with the run's paths filled in)
    RUN/data/                codegpt prep
    RUN/tokenizer/           codegpt tokenizer
    RUN/tokens/              codegpt tokenize
    RUN/train/               codegpt train (pretraining)
    RUN/sft-data/            codegpt sft-data (Codex-S pairs)
    RUN/sft/                 codegpt train (fine-tuning from RUN/train)
    RUN/humaneval/MODEL/tT/  codegpt eval humaneval, for MODEL base|sft at temperature T
    RUN/report/              codegpt report
    RUN/timings.json         each stage's state, wall time and config hash
    RUN/results.json         the headline figures, the commit and the machine

A stage whose output is complete is skipped, so a killed run continues where it stopped:
training and evaluation resume from their own checkpoints and samples files, the other stages
start again. A stage that ran with other settings than the config now asks for is refused by
name, never overwritten; once a stage runs again, every stage after it runs again too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from codegpt.config import config_from_raw, deep_merge, find_named_config, read_yaml
from codegpt.errors import ConfigError, StageFailed
from codegpt.io import atomic_write_json, atomic_write_text


@dataclass
class SamplingRun:
    temperature: float = 0.2
    n: int = 10                    # samples per problem: pass@k is reported for k <= n

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"humaneval.runs: temperature must be >= 0, got {self.temperature}")
        if self.n < 1:
            raise ValueError(f"humaneval.runs: n must be >= 1, got {self.n}")


@dataclass
class HumanEvalSection:
    models: list[str] = field(default_factory=lambda: ["base", "sft"])
    runs: list[SamplingRun] = field(default_factory=lambda: [SamplingRun(0.2, 10),
                                                             SamplingRun(0.8, 10)])
    max_new_tokens: int = 128
    top_p: float = 0.95
    batch_size: int = 50
    timeout: float = 5.0
    limit: int = 0                 # only the first N problems (0: all 164; for smoke runs)
    device: str = "cpu"            # cpu, cuda, ...

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ValueError(f"humaneval.models: unknown model {unknown[0]!r} "
                             f"(choose from {', '.join(MODELS)})")
        if not self.runs:
            raise ValueError("humaneval.runs: give at least one {temperature, n}")


@dataclass
class ReferenceConfig:
    out_dir: str = "runs/reference"
    budget_minutes: float = 30.0   # the whole run's wall time; a run over it is reported
    # Each stage: its own config keys, over the base config named by `config` (a name under
    # configs/STAGE/ or a path; none: the stage's defaults). The paths between stages
    # (data_dir, tokenizer, out_dir, init_from) are the run's and may not be set here.
    data: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    sft_data: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    humaneval: HumanEvalSection = field(default_factory=HumanEvalSection)

    STAGE = "reference"

    def __post_init__(self) -> None:
        for name, _, _ in PIPELINE:
            section = getattr(self, name)
            if not isinstance(section, dict):
                raise ValueError(f"{name} must be a mapping of the {name} stage's config keys, "
                                 f"got {section!r}")
            for key in PATH_KEYS:
                if key in section:
                    raise ValueError(f"{name}.{key} is set by the reference run (the stages' "
                                     "folders are under out_dir): remove it")


MODELS = {"base": "train", "sft": "sft"}           # model name -> the run folder it is


def eval_name(model: str, temperature: float) -> str:
    """An evaluation's stage name, and its folder under RUN."""
    return f"humaneval/{model}/t{temperature:g}"

PATH_KEYS = ("data_dir", "tokenizer", "out_dir", "init_from")
# (section, codegpt command, the output folder under RUN)
PIPELINE = (("data", "prep", "data"), ("tokenizer", "tokenizer", "tokenizer"),
            ("tokens", "tokenize", "tokens"), ("train", "train", "train"),
            ("sft_data", "sft-data", "sft-data"), ("sft", "train", "sft"))
RESUMABLE = {"train", "sft"}                       # continue from their own checkpoints


def stage_config_classes() -> dict[str, type]:
    from codegpt.sft.data import SftDataConfig
    from codegpt.tokenizer.bpe import TokenizerConfig
    from codegpt.tokenizer.encode import TokenizeConfig
    from codegpt.train.config import TrainConfig
    from data_prep.config import PrepConfig

    return {"data": PrepConfig, "tokenizer": TokenizerConfig, "tokens": TokenizeConfig,
            "train": TrainConfig, "sft_data": SftDataConfig, "sft": TrainConfig}


def stage_paths(run: Path) -> dict[str, dict]:
    """The paths each stage reads and writes, all inside the run folder."""
    return {
        "data": {"out_dir": run / "data"},
        "tokenizer": {"data_dir": run / "data", "out_dir": run / "tokenizer"},
        "tokens": {"data_dir": run / "data", "tokenizer": run / "tokenizer",
                   "out_dir": run / "tokens"},
        "train": {"data_dir": run / "tokens", "tokenizer": run / "tokenizer",
                  "out_dir": run / "train"},
        "sft_data": {"data_dir": run / "data", "out_dir": run / "sft-data"},
        "sft": {"data_dir": run / "sft-data", "tokenizer": run / "tokenizer",
                "init_from": run / "train", "out_dir": run / "sft"},
    }


def stage_raw(cfg: ReferenceConfig, name: str, run: Path) -> dict:
    """A stage's whole config: base config, then the section's keys, then the run's paths."""
    section = dict(getattr(cfg, name))
    base = section.pop("config", None)
    cls = stage_config_classes()[name]
    raw = read_yaml(find_named_config(cls.STAGE, str(base))) if base else {}
    raw = deep_merge(raw, section)
    for old, new in getattr(cls, "RENAMED", {}).items():  # a base config's old path keys
        top, _, key = old.partition(".")
        if new in PATH_KEYS and isinstance(raw.get(top), dict):
            raw[top] = {k: v for k, v in raw[top].items() if k != key}
    return {**raw, **{k: str(v) for k, v in stage_paths(run)[name].items()}}


def validate(cfg: ReferenceConfig) -> None:
    """Load every stage's config now, so a bad key stops the run before hours are spent (the
    fine-tuning's init_from is checked when pretraining has written it)."""
    run = Path(cfg.out_dir)
    for name, cls in stage_config_classes().items():
        raw = stage_raw(cfg, name, run)
        if name == "sft":
            raw.pop("init_from")
        try:
            config_from_raw(cls, raw)
        except ConfigError as e:
            raise ConfigError(f"reference config, section {name}: {e}") from e


# --- the run's state -------------------------------------------------------------------------

def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Timings:
    """RUN/timings.json: per stage its status (started | done), wall seconds and config hash."""

    def __init__(self, run: Path):
        self.path = run / "timings.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("stages", {})

    def get(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def set(self, stage: str, **entry) -> None:
        self.data["stages"][stage] = entry
        self.write()

    def update(self, **top) -> None:
        self.data.update(top)
        self.write()

    def write(self) -> None:  # the stages in the order they ran
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip()[:12] + (" (modified)" if dirty.stdout.strip() else "")


def machine() -> str:
    import torch

    from codegpt.train.flops import cpu_name

    where = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name()}"
    return where


# --- running stages ---------------------------------------------------------------------------

def run_command(argv: list[str]) -> None:
    shown = " ".join(argv[2:]) if argv[:2] == [sys.executable, "-m"] else " ".join(argv)
    print(f"$ {shown.replace('codegpt.__main__', 'codegpt', 1)}", flush=True)
    proc = subprocess.run(argv)
    if proc.returncode != 0:
        raise StageFailed(f"'{shown}' exited with code {proc.returncode}: fix what it says and "
                          "run the reference again; the stages already done are kept")


class Reference:
    def __init__(self, cfg: ReferenceConfig, config_path: str):
        self.cfg = cfg
        self.config_path = config_path
        self.run = Path(cfg.out_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.timings = Timings(self.run)
        self.rerun_rest = False     # once a stage runs, every later stage runs again

    def stage(self, key: str, text: str, output: Path, resumable: bool, argv: list[str],
              config_file: Path | None = None) -> None:
        """Run one stage unless its output is complete with the same settings."""
        entry = self.timings.get(key)
        digest = config_hash(text)
        if entry and entry.get("config") != digest and output.exists():
            raise ConfigError(
                f"stage {key} already {'ran' if entry['status'] == 'done' else 'started'} with "
                f"other settings (see {config_file or output}); delete {output} to run it again "
                "with the new ones, or set out_dir to a new folder")
        if (entry and entry["status"] == "done" and output.exists() and not self.rerun_rest):
            print(f"== {key}: done in an earlier run ({entry['seconds']:.0f} s), skipped",
                  flush=True)
            return
        resume = (entry is not None and entry["status"] == "started" and resumable
                  and not self.rerun_rest and output.exists())
        if output.exists() and not resume:
            shutil.rmtree(output)
        self.rerun_rest = True
        if config_file is not None:
            atomic_write_text(config_file, text)
        print(f"== {key}{' (continuing)' if resume else ''}", flush=True)
        before = entry.get("seconds", 0.0) if resume else 0.0  # a killed run's time counts
        self.timings.set(key, status="started", config=digest, seconds=before)
        start = time.perf_counter()
        try:
            run_command(argv)
        finally:
            spent = before + time.perf_counter() - start
            self.timings.set(key, status="started", config=digest, seconds=round(spent, 1))
        self.timings.set(key, status="done", config=digest, seconds=round(spent, 1),
                         finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        print(f"== {key}: {spent:.0f} s", flush=True)

    def codegpt(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "codegpt", *args]

    def run_pipeline(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        self.timings.update(config=self.config_path, commit=git_commit(), machine=machine())
        for name, command, folder in PIPELINE:
            raw = stage_raw(cfg, name, self.run)
            text = yaml.safe_dump(raw, sort_keys=False)
            config_file = self.run / "configs" / f"{name}.yaml"
            self.stage(name, text, self.run / folder, name in RESUMABLE,
                       self.codegpt(command, str(config_file)), config_file)
        he = cfg.humaneval
        for model in he.models:
            for i, sr in enumerate(he.runs):
                name = eval_name(model, sr.temperature)
                out = self.run / name
                argv = self.codegpt(
                    "eval", "humaneval", "--checkpoint", str(self.run / MODELS[model]),
                    "--tokenizer", str(self.run / "tokenizer"), "--out", str(out),
                    "--n", str(sr.n), "--temperature", str(sr.temperature), "--top-p",
                    str(he.top_p), "--max-new-tokens", str(he.max_new_tokens), "--batch-size",
                    str(he.batch_size), "--timeout", str(he.timeout), "--limit", str(he.limit),
                    "--device", he.device,
                    *(["--no-likelihood"] if i else []))  # the first run measures it
                self.stage(name, " ".join(argv[3:]), out, True, argv)
        print("== report", flush=True)
        t0 = time.perf_counter()
        from codegpt.report import write_report

        page = write_report(self.run)
        self.timings.set("report", status="done", config="", seconds=round(
            time.perf_counter() - t0, 1))
        self.timings.update(last_invocation_s=round(time.perf_counter() - started, 1))
        results = collect_results(self.run, cfg)
        atomic_write_json(self.run / "results.json", results)
        print_summary(results, page)
        return results


# --- results ----------------------------------------------------------------------------------

def last_val_loss(run_dir: Path) -> float | None:
    from codegpt.train.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    vals = [r["val_loss"] for r in read_metrics(path) if "val_loss" in r]
    return vals[-1] if vals else None


def collect_results(run: Path, cfg: ReferenceConfig) -> dict:
    """The headline figures of each model, with the commit, the machine and the stage times."""
    timings = Timings(run).data
    stages = {k: v.get("seconds") for k, v in timings["stages"].items()}
    models = {}
    for model in cfg.humaneval.models:
        entry: dict = {"val_loss": last_val_loss(run / MODELS[model]), "temperatures": {}}
        for sr in cfg.humaneval.runs:
            path = run / eval_name(model, sr.temperature) / "results.json"
            if not path.is_file():
                continue
            res = json.loads(path.read_text())
            entry.setdefault("canonical_bits_per_byte", res.get("canonical_bits_per_byte"))
            entry["temperatures"][f"{sr.temperature:g}"] = {
                "n": sr.n, "syntax_rate": res.get("syntax_rate"), "problems": res.get("problems"),
                **{k: v for k, v in res.items() if k.startswith("pass@")}}
        models[model] = entry
    total = sum(v for v in stages.values() if v)
    return {"commit": timings.get("commit"), "machine": timings.get("machine"),
            "config": timings.get("config"), "budget_minutes": cfg.budget_minutes,
            "total_seconds": round(total, 1), "pretrain_seconds": stages.get("train") or 0.0,
            "within_budget": total <= cfg.budget_minutes * 60, "stages": stages,
            "models": models}


def results_table(results: dict) -> str:
    """The README's results table: one row per model and temperature."""
    rows = ["| model | val loss | canonical bits/byte | T | n | syntax rate | pass@1 | pass@10 "
            "| pass@100 |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    for model, m in results["models"].items():
        for t, r in m["temperatures"].items():
            rows.append(f"| {model} | {fmt(m['val_loss'])} | {fmt(m.get('canonical_bits_per_byte'))}"
                        f" | {t} | {r['n']} | {fmt(r['syntax_rate'], True)} | "
                        f"{fmt(r.get('pass@1'), True)} | {fmt(r.get('pass@10'), True)} | "
                        f"{fmt(r.get('pass@100'), True)} |")
    return "\n".join(rows)


def print_summary(results: dict, page: Path) -> None:
    print()
    print(results_table(results))
    print()
    for stage, seconds in results["stages"].items():
        print(f"  {stage:24s} {seconds or 0:8.1f} s")
    total, budget = results["total_seconds"], results["budget_minutes"]
    verdict = "within" if results["within_budget"] else "OVER"
    print(f"  {'total':24s} {total:8.1f} s = {total / 60:.1f} min, {verdict} the budget of "
          f"{budget:g} min")
    print(f"commit {results['commit']} on {results['machine']}")
    print(f"report: {page}")


def run_reference(config: str, overrides: list[str]) -> dict:
    from codegpt.config import load_config

    cfg = load_config(ReferenceConfig, config, overrides)
    validate(cfg)
    return Reference(cfg, config).run_pipeline()
