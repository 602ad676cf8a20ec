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

A stage whose output is complete (its ``codegpt-output.json`` marker says so, the marker the
next stage and ``codegpt report`` check too) is skipped, so a killed run continues where it
stopped: data prep, training and evaluation resume from their own checkpoints and samples
files, the other stages start again. A stage that ran with other settings than the config now
asks for is refused by name, never overwritten; once a stage runs again, every stage after it
runs again too, and an outdated output is kept under ``RUN/.replaced/`` until its replacement is
complete. The run folder is locked while a run writes to it (``codegpt.outputs``).
"""

from __future__ import annotations

import dataclasses
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

from codegpt.config import (DEVICE, check_device, config_from_raw, deep_merge,
                            find_named_config, read_yaml, section_class, setting)
from codegpt.errors import ConfigError, StageFailed
from codegpt.io import atomic_write_json, atomic_write_text
from codegpt.outputs import IN_PLACE, output_state, writing_in_place

MODELS = {"base": "train", "sft": "sft"}           # model name -> the run folder it is


@dataclass
class SamplingRun:
    temperature: float = setting(0.2, ge=0)  # 0 is greedy
    n: int = setting(10, ge=1)     # samples per problem: pass@k is reported for k <= n


@dataclass
class HumanEvalSection:
    models: list[str] = setting(default_factory=lambda: ["base", "sft"], choices=tuple(MODELS))
    runs: list[SamplingRun] = field(default_factory=lambda: [SamplingRun(0.2, 10),
                                                             SamplingRun(0.8, 10)])
    max_new_tokens: int = setting(128, ge=1)
    top_p: float = setting(0.95, gt=0, le=1)
    batch_size: int = setting(50, ge=1)   # sequences decoded together
    timeout: float = setting(5.0, gt=0)   # seconds per program
    limit: int = setting(0, ge=0)  # only the first N problems (0: all 164; for smoke runs)
    device: str = setting("cpu", **DEVICE)  # cpu, cuda, cuda:N, mps (checked before the run)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("humaneval.runs: give at least one {temperature, n}")


@dataclass
class ReferenceConfig:
    out_dir: str = "runs/reference"
    # the whole run's wall time; a run over it is reported
    budget_minutes: float = setting(30.0, gt=0)
    # Each stage: its own config keys, over the base config named by `config` (a name under
    # configs/STAGE/ or a path; none: the stage's defaults). The paths between stages
    # (data_dir, tokenizer, out_dir, init_from) are the run's and may not be set here.
    # ``keys_of`` names the stage's config class (``stage_config_classes``): overrides into a
    # section are typed by it, and ``validate`` checks the section with it.
    data: dict = setting(default_factory=dict, keys_of="data_prep.config:PrepConfig")
    tokenizer: dict = setting(default_factory=dict,
                              keys_of="codegpt.tokenizer.bpe:TokenizerConfig")
    tokens: dict = setting(default_factory=dict, keys_of="codegpt.tokenizer.encode:TokenizeConfig")
    train: dict = setting(default_factory=dict, keys_of="codegpt.train.config:TrainConfig")
    sft_data: dict = setting(default_factory=dict, keys_of="codegpt.sft.data:SftDataConfig")
    sft: dict = setting(default_factory=dict, keys_of="codegpt.train.config:TrainConfig")
    humaneval: HumanEvalSection = field(default_factory=HumanEvalSection)

    STAGE = "reference"

    def __post_init__(self) -> None:
        for name, _, _ in PIPELINE:
            section = getattr(self, name)
            for key in PATH_KEYS:
                if key in section:
                    raise ValueError(f"{name}.{key} is set by the reference run (the stages' "
                                     "folders are under out_dir): remove it")


def eval_name(model: str, temperature: float) -> str:
    """An evaluation's stage name, and its folder under RUN."""
    return f"humaneval/{model}/t{temperature:g}"

PATH_KEYS = ("data_dir", "tokenizer", "out_dir", "init_from")
# (section, codegpt command, the output folder under RUN)
PIPELINE = (("data", "prep", "data"), ("tokenizer", "tokenizer", "tokenizer"),
            ("tokens", "tokenize", "tokens"), ("train", "train", "train"),
            ("sft_data", "sft-data", "sft-data"), ("sft", "train", "sft"))


def stage_config_classes() -> dict[str, type]:
    """Each stage section's config class, as ReferenceConfig's fields declare it."""
    fields = {f.name: f for f in dataclasses.fields(ReferenceConfig)}
    return {name: section_class(fields[name]) for name, _, _ in PIPELINE}


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
    """Load every stage's config now, so a bad key or value stops the run before hours are
    spent (the fine-tuning's init_from is checked when pretraining has written it; data prep's
    sources are built, which checks their options and local folders). The humaneval section
    was checked when ``cfg`` was loaded; ``check_machine`` checks its device."""
    from data_prep.pipeline import build_sources

    run = Path(cfg.out_dir)
    for name, cls in stage_config_classes().items():
        raw = stage_raw(cfg, name, run)
        if name == "sft":
            raw.pop("init_from")
        try:
            stage_cfg = config_from_raw(cls, raw)
            if name == "data":
                build_sources(stage_cfg.sources)
        except ConfigError as e:
            raise ConfigError(f"reference config, section {name}: {e}") from e


def check_machine(cfg: ReferenceConfig) -> None:
    """Refuse a humaneval.device this machine does not have, before any stage runs."""
    check_device(cfg.humaneval.device, "humaneval.device")


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
        self.timings: Timings | None = None  # read once the run folder is ours
        self.rerun_rest = False     # once a stage runs, every later stage runs again

    def stage(self, key: str, command: str, text: str, output: Path, argv: list[str],
              config_file: Path | None = None) -> None:
        """Run one stage unless its output is complete (its marker says so) with the same
        settings; continue an incomplete one of the same settings; replace an outdated one
        only once the new one is complete."""
        entry = self.timings.get(key)
        digest = config_hash(text)
        state = output_state(output, command)
        if entry and entry.get("config") != digest and state != "absent":
            raise ConfigError(
                f"stage {key} already {'ran' if entry['status'] == 'done' else 'started'} with "
                f"other settings (see {config_file or output}); delete {output} to run it again "
                "with the new ones, or set out_dir to a new folder")
        same = entry is not None and not self.rerun_rest
        if same and state == "complete" or (same and state == "unmarked"
                                            and entry["status"] == "done"):
            print(f"== {key}: done in an earlier run ({entry['seconds']:.0f} s), skipped",
                  flush=True)
            return
        resume = same and command in IN_PLACE and state in ("incomplete", "unmarked")
        if state != "absent" and not resume and command in IN_PLACE:
            self.move_aside(key, output)  # deleted once the new output is complete
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
        for outdated in self.replaced(key):  # the new output is complete
            shutil.rmtree(outdated, ignore_errors=True)
        print(f"== {key}: {spent:.0f} s", flush=True)

    def replaced(self, key: str) -> list[Path]:
        return sorted((self.run / ".replaced").glob(f"{key.replace('/', '__')}-*"))

    def move_aside(self, key: str, output: Path) -> Path:
        """An outdated output of a stage that writes in place, kept under RUN/.replaced/ until
        its replacement is complete (a run killed or failed meanwhile keeps it there)."""
        aside = self.run / ".replaced" / f"{key.replace('/', '__')}-{time.time_ns()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(output, aside)
        print(f"== {key}: the earlier output is outdated; kept in {aside} until the new one is "
              "complete", flush=True)
        return aside

    def codegpt(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "codegpt", *args]

    def run_pipeline(self) -> dict:
        """Every stage, in a run folder that this run alone writes to (its lock); the folder's
        marker says complete once the report and results.json are written."""
        with writing_in_place(self.run, "reference") as place:
            self.timings = Timings(self.run)
            results, page = self.stages()
            place.complete([self.run / "results.json", self.run / "timings.json", page])
        print_summary(results, page)
        return results

    def stages(self) -> tuple[dict, Path]:
        cfg = self.cfg
        started = time.perf_counter()
        self.timings.update(config=self.config_path, commit=git_commit(), machine=machine())
        for name, command, folder in PIPELINE:
            raw = stage_raw(cfg, name, self.run)
            text = yaml.safe_dump(raw, sort_keys=False)
            config_file = self.run / "configs" / f"{name}.yaml"
            self.stage(name, command, text, self.run / folder,
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
                self.stage(name, "eval humaneval", " ".join(argv[3:]), out, argv)
        print("== report", flush=True)
        t0 = time.perf_counter()
        from codegpt.report import write_report

        page = write_report(self.run)
        self.timings.set("report", status="done", config="", seconds=round(
            time.perf_counter() - t0, 1))
        self.timings.update(last_invocation_s=round(time.perf_counter() - started, 1))
        results = collect_results(self.run, cfg)
        atomic_write_json(self.run / "results.json", results)
        return results, page


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
    check_machine(cfg)
    return Reference(cfg, config).run_pipeline()
