"""The reference run: raw Python files to a HumanEval report in one command.

``codegpt reference configs/reference/cpu.yaml`` (``make reference``) runs every stage of the
pipeline into one folder, each as the ``codegpt`` command a user would type::

    RUN/configs/STAGE.yaml   the config each stage ran with (its section of the reference config
                             over its base config, with the run's paths filled in; for each
                             evaluation humaneval-MODEL-tT.yaml, the eval config)
    RUN/data/                codegpt prep
    RUN/tokenizer/           codegpt tokenizer
    RUN/tokens/              codegpt tokenize
    RUN/train/               codegpt train (pretraining)
    RUN/sft-data/            codegpt sft-data (Codex-S pairs)
    RUN/sft/                 codegpt train (fine-tuning from RUN/train)
    RUN/humaneval/MODEL/tT/  codegpt eval humaneval, for MODEL base|sft at temperature T
    RUN/mbpp/MODEL/tT/       codegpt eval mbpp (and humaneval-plus/, mbpp-plus/ where asked):
                             each benchmark whose data is on this machine; one that is not is
                             skipped, saying how to get it
    RUN/report/              codegpt report
    RUN/timings.json         each stage's state, wall time and config hash
    RUN/results.json         the headline figures, the commit and the machine

A stage whose output is complete (its ``codegpt-output.json`` marker says so, the marker the
next stage and ``codegpt report`` check too) is skipped, so a killed run continues where it
stopped: data prep, training and evaluation resume from their own checkpoints and samples
files, the other stages start again. A stage that ran with other settings than the config now
asks for is refused by name, never overwritten; once a stage runs again, every stage after it
runs again too (but an evaluation: none reads another), and an outdated output is kept under
``RUN/.replaced/`` until its replacement is complete. The run folder is locked while a run
writes to it (``codegpt.outputs``). The stages, their commands and folders are the table of
``codegpt.stages``. A benchmark whose data is not on this machine is skipped (timings.json
says why, and how to get it); the other stages run.
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

import torch

from codegpt.config import (BASE_CONFIG_KEY, check_device, config_from_raw, deep_merge,
                            find_named_config, from_dict, load_config, read_yaml, setting,
                            yaml_text)
from codegpt.errors import ConfigError, StageFailed
from codegpt.io import atomic_write_json, atomic_write_text
from codegpt.benchmarks import missing_data
from codegpt.outputs import IN_PLACE, output_state, writing_in_place
from codegpt.report import write_report
from codegpt.stages import BY_FOLDER, EVALUATIONS, MODELS, STAGES, Stage, stage
from codegpt.train.flops import cpu_name
from codegpt.train.metrics import read_metrics

PIPELINE = tuple(s for s in STAGES if not s.benchmark)  # the stages before evaluation, in order
# the paths between stages, which the run sets (a section may not); evaluation's also
PATH_KEYS = ("data_dir", "tokenizer", "out_dir", "init_from")
EVAL_PATH_KEYS = (*PATH_KEYS, "checkpoint", "samples")
RUN_KEYS = ("temperature", "n")
MIDDLE_KEYS = ("middle_fim_bits_per_byte", "middle_l2r_bits_per_byte")  # the sampling keys each of an evaluation section's runs sets
# which models each benchmark evaluates, at which temperatures and n, unless its section says:
# HumanEval both models; MBPP the Codex-S model; the plus sets none (their data is seldom local)
PLANS = {"humaneval": {}, "mbpp": {"models": ["sft"], "runs": [{"temperature": 0.1, "n": 5}]},
         "humaneval_plus": {"models": []}, "mbpp_plus": {"models": []},
         "infilling": {"runs": [{"temperature": 0.2, "n": 1}]}}


@dataclass
class SamplingRun:
    temperature: float = setting(0.2, ge=0)  # 0 is greedy
    n: int = setting(10, ge=1)     # samples per problem: pass@k is reported for k <= n


@dataclass
class EvalPlan:
    """What an evaluation section evaluates (its other keys are the eval config's)."""

    models: list[str] = setting(default_factory=lambda: ["base", "sft"], choices=tuple(MODELS))
    runs: list[SamplingRun] = field(default_factory=lambda: [SamplingRun(0.2, 10),
                                                             SamplingRun(0.8, 10)])

    KEYS = ("models", "runs")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs: give at least one {temperature, n}")


def _section(name: str, **kw):
    """A stage's section: the keys of its config class, over the base config named by its
    ``config`` key (``keys_of``: overrides into it are typed by that class)."""
    return setting(default_factory=lambda: dict(kw), keys_of=stage(name).config)


@dataclass
class ReferenceConfig:
    out_dir: str = "runs/reference"
    # the whole run's wall time; a run over it is reported
    budget_minutes: float = setting(30.0, gt=0)
    # Each stage: its own config keys, over the base config named by `config` (a name under
    # configs/STAGE/ or a path; none: the stage's defaults). The paths between stages
    # (data_dir, tokenizer, out_dir, init_from, checkpoint) are the run's and may not be set
    # here. ``validate`` checks each section with its stage's config class.
    data: dict = _section("data")
    tokenizer: dict = _section("tokenizer")
    tokens: dict = _section("tokens")
    train: dict = _section("train")
    sft_data: dict = _section("sft_data")
    sft: dict = _section("sft")
    # Each benchmark: the eval config's keys (over configs/eval/NAME.yaml), and which models
    # (models) at which temperatures and sample counts (runs: [{temperature, n}]) it evaluates
    # (PLANS: what it evaluates unless it says; models: [] for none)
    humaneval: dict = _section("humaneval")
    humaneval_plus: dict = _section("humaneval_plus")
    mbpp: dict = _section("mbpp")
    mbpp_plus: dict = _section("mbpp_plus")
    # HumanEval infilling (the eval infilling config's keys over configs/eval/infilling.yaml)
    infilling: dict = _section("infilling")

    STAGE = "reference"

    def __post_init__(self) -> None:
        for s in STAGES:
            section = getattr(self, s.name)
            for key in EVAL_PATH_KEYS if s.benchmark else PATH_KEYS:
                if key in section:
                    raise ValueError(f"{s.name}.{key} is set by the reference run (the stages' "
                                     "folders are under out_dir): remove it")
        for s in EVALUATIONS:
            section = getattr(self, s.name)
            sampling = section.get("sampling")
            for key in RUN_KEYS:
                if key in section or isinstance(sampling, dict) and key in sampling:
                    raise ValueError(f"{s.name}.sampling.{key} is set for each run by "
                                     f"{s.name}.runs ([{{temperature, n}}, ...]): remove it")
            eval_plan(self, s)  # models and runs are checked as the config loads


def eval_plan(cfg: ReferenceConfig, s: Stage) -> EvalPlan:
    """What the section of evaluation stage ``s`` evaluates: its models and runs (PLANS's
    where it does not say)."""
    section = getattr(cfg, s.name)
    return from_dict(EvalPlan, {**PLANS.get(s.name, {}),
                                **{k: v for k, v in section.items() if k in EvalPlan.KEYS}},
                     prefix=f"{s.name}.")


def eval_name(s: Stage, model: str, temperature: float) -> str:
    """An evaluation's stage name, and its folder under RUN."""
    return f"{s.folder}/{model}/t{temperature:g}"


def benchmark_of(key: str) -> str | None:
    """The benchmark a stage of the run measures (by its key: an ``eval_name``), or None."""
    s = BY_FOLDER.get(key.split("/")[0])
    return s.benchmark if s else None


def stage_config_classes() -> dict[str, type]:
    """Each stage section's config class (the table of stages says it)."""
    return {s.name: s.config_class() for s in STAGES}


def stage_paths(run: Path) -> dict[str, dict]:
    """The paths each stage before evaluation reads and writes, all inside the run folder."""
    return {s.name: {**{key: run / stage(read).folder for key, read in s.reads.items()},
                     "out_dir": run / s.folder} for s in PIPELINE}


def section_raw(cfg: ReferenceConfig, name: str, default_base: str | None = None) -> dict:
    """A section's keys over the base config its ``config`` key names (or ``default_base``)."""
    section = {k: v for k, v in getattr(cfg, name).items()
               if not (stage(name).benchmark and k in EvalPlan.KEYS)}
    base = section.pop(BASE_CONFIG_KEY, default_base)
    cls = stage(name).config_class()
    raw = read_yaml(find_named_config(cls.STAGE, str(base))) if base else {}
    raw = deep_merge(raw, section)
    for old, new in getattr(cls, "RENAMED", {}).items():  # a base config's old path keys
        top, _, key = old.partition(".")
        if new in PATH_KEYS and isinstance(raw.get(top), dict):
            raw[top] = {k: v for k, v in raw[top].items() if k != key}
    return raw


def stage_raw(cfg: ReferenceConfig, name: str, run: Path) -> dict:
    """A stage's whole config: base config, then the section's keys, then the run's paths."""
    return {**section_raw(cfg, name), **{k: str(v) for k, v in stage_paths(run)[name].items()}}


def eval_raws(cfg: ReferenceConfig, run: Path) -> dict[str, tuple[Stage, dict]]:
    """Each evaluation's stage and whole config by its stage name (``eval_name``), benchmark
    by benchmark: its section over its base eval config (configs/eval/NAME.yaml), the run's
    temperature and n, and the run's paths. The canonical solutions' likelihood, which does
    not depend on sampling, is measured by the first run of each model only."""
    out = {}
    for s in EVALUATIONS:
        plan = eval_plan(cfg, s)
        if not plan.models:
            continue
        base = section_raw(cfg, s.name, s.benchmark)
        for model in plan.models:
            for i, sr in enumerate(plan.runs):
                name = eval_name(s, model, sr.temperature)
                raw = deep_merge(base, {"sampling": {"temperature": sr.temperature, "n": sr.n}})
                if i and raw.get("likelihood", "with") == "with":
                    raw["likelihood"] = "skip"
                out[name] = (s, {**raw, "checkpoint": str(run / stage(MODELS[model]).folder),
                                 **{k: str(run / stage(read).folder)
                                    for k, read in s.reads.items()},
                                 "out_dir": str(run / name)})
    return out


def validate(cfg: ReferenceConfig) -> list:
    """Load every stage's config now, so a bad key or value stops the run before hours are
    spent (the fine-tuning's init_from is checked when pretraining has written it; data prep's
    sources are built, which checks their options and local folders). Returns the evaluations'
    configs, whose devices ``check_machine`` checks against this machine."""
    from data_prep.pipeline import build_sources  # the data extra (datatrove)

    run = Path(cfg.out_dir)
    raws = [(s.name, s.config_class(), stage_raw(cfg, s.name, run), False) for s in PIPELINE]
    raws += [(s.name, s.config_class(), raw, True) for s, raw in eval_raws(cfg, run).values()]
    # a benchmark that evaluates no model: its section's keys are checked all the same
    raws += [(s.name, s.config_class(), {**section_raw(cfg, s.name, s.benchmark),
                                         "out_dir": str(run / s.folder)}, False)
             for s in EVALUATIONS if not eval_plan(cfg, s).models]
    evals = []
    for name, cls, raw, runs in raws:
        if name == "sft":
            raw.pop("init_from")
        try:
            stage_cfg = config_from_raw(cls, raw)
            if name == "data":
                build_sources(stage_cfg.sources)
            if runs:
                evals.append(stage_cfg)
        except ConfigError as e:
            raise ConfigError(f"reference config, section {name}: {e}") from e
    return evals


# --- the run's state -------------------------------------------------------------------------

def check_machine(evals: list) -> None:
    """Refuse an evaluation's device this machine does not have, before any stage runs."""
    for cfg in evals:
        check_device(cfg.device, f"{cfg.benchmark.replace('-', '_')}.device")


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
        if not benchmark_of(key):
            self.rerun_rest = True  # what reads this output runs again (no stage reads an eval)
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

    def skip(self, key: str, why: str) -> None:
        """A stage that cannot run on this machine (a benchmark's data is not here): said, and
        recorded in timings.json, while the rest of the run goes on."""
        print(f"== {key}: skipped: {why}", flush=True)
        self.timings.set(key, status="skipped", reason=why, seconds=0.0)

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
            # absolute: a relative out_dir's paths are the working directory's, not the run's
            place.complete([place.folder / "results.json", place.folder / "timings.json",
                            page.resolve()])
        print_summary(results, page)
        return results

    def stages(self) -> tuple[dict, Path]:
        cfg = self.cfg
        started = time.perf_counter()
        self.timings.update(config=self.config_path, commit=git_commit(), machine=machine())
        runs = [(s.name, s.command, s.folder, stage_raw(cfg, s.name, self.run)) for s in PIPELINE]
        runs += [(name, s.command, name, raw)  # one evaluation per model and temperature
                 for name, (s, raw) in eval_raws(cfg, self.run).items()]
        for name, command, folder, raw in runs:  # each as the command a user would type
            config_file = self.run / "configs" / f"{name.replace('/', '-')}.yaml"
            benchmark = benchmark_of(name)
            why = benchmark and missing_data(benchmark, raw.get("problems") or "")
            if why and output_state(self.run / folder, command) != "complete":
                self.skip(name, why)  # a benchmark whose data is not here: only its stages
                continue
            self.stage(name, command, yaml_text(raw), self.run / folder,
                       self.codegpt(*command.split(), str(config_file)), config_file)
        print("== report", flush=True)
        t0 = time.perf_counter()
        page = write_report(self.run)
        self.timings.set("report", status="done", config="", seconds=round(
            time.perf_counter() - t0, 1))
        self.timings.update(last_invocation_s=round(time.perf_counter() - started, 1))
        results = collect_results(self.run, cfg)
        atomic_write_json(self.run / "results.json", results)
        return results, page


# --- results ----------------------------------------------------------------------------------

def last_val_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    vals = [r["val_loss"] for r in read_metrics(path) if "val_loss" in r]
    return vals[-1] if vals else None


def collect_results(run: Path, cfg: ReferenceConfig) -> dict:
    """The headline figures of each model on each benchmark, with the commit, the machine, the
    stage times and the stages skipped (with why)."""
    timings = Timings(run).data
    stages = {k: v.get("seconds") for k, v in timings["stages"].items()}
    skipped = {k: v.get("reason", "") for k, v in timings["stages"].items()
               if v.get("status") == "skipped"}
    models: dict[str, dict] = {}
    for s in EVALUATIONS:
        plan = eval_plan(cfg, s)
        for model in plan.models:
            entry = models.setdefault(model, {
                "val_loss": last_val_loss(run / stage(MODELS[model]).folder), "benchmarks": {}})
            bench: dict = {"canonical_bits_per_byte": None, "temperatures": {}}
            for sr in plan.runs:
                path = run / eval_name(s, model, sr.temperature) / "results.json"
                if not path.is_file():
                    continue
                res = json.loads(path.read_text())
                if bench["canonical_bits_per_byte"] is None:
                    bench["canonical_bits_per_byte"] = res.get("canonical_bits_per_byte")
                for key in MIDDLE_KEYS:  # infilling: the middles' likelihood, once per model
                    if res.get(key) is not None:
                        bench[key] = res[key]
                bench["temperatures"][f"{sr.temperature:g}"] = {
                    "n": sr.n, "syntax_rate": res.get("syntax_rate"),
                    "problems": res.get("problems"), "solved": res.get("solved"),
                    "prompts_cut": res.get("prompts_cut"),
                    **{k: v for k, v in res.items()
                       if k.startswith(("pass@", "base_pass@", "exact_match"))}}
            if bench["temperatures"] or bench["canonical_bits_per_byte"] is not None:
                entry["benchmarks"][s.benchmark] = bench
    total = sum(v for v in stages.values() if v)
    return {"commit": timings.get("commit"), "machine": timings.get("machine"),
            "config": timings.get("config"), "budget_minutes": cfg.budget_minutes,
            "total_seconds": round(total, 1), "pretrain_seconds": stages.get("train") or 0.0,
            "within_budget": total <= cfg.budget_minutes * 60, "stages": stages,
            "skipped": skipped, "models": models}


def solved_cell(solved: list[str] | None, shown: int = 8) -> str:
    """The problems solved (at least one sample passed): how many, and which when few."""
    if solved is None:
        return "–"
    if not solved or len(solved) > shown:
        return str(len(solved))
    return f"{len(solved)}: {', '.join(solved)}"


def results_table(results: dict) -> str:
    """The README's results table: one row per model, benchmark and temperature (base pass@1:
    a plus set's samples under the original benchmark's tests)."""
    rows = ["| model | val loss | benchmark | canonical bits/byte | T | n | prompts cut "
            "| syntax rate | pass@1 | pass@10 | pass@100 | base pass@1 | solved |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    infill = ["", "| model | infilling (single-line) | T | n | pass@1 | exact match | syntax rate "
              "| middle bits/byte with the suffix | left to right |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model, m in results["models"].items():
        for bench, b in m["benchmarks"].items():
            for t, r in b["temperatures"].items():
                if bench == "infilling":
                    infill.append(
                        f"| {model} | {r.get('problems')} tasks | {t} | {r['n']} | "
                        f"{fmt(r.get('pass@1'), True)} | {fmt(r.get('exact_match'), True)} | "
                        f"{fmt(r['syntax_rate'], True)} | "
                        f"{fmt(b.get('middle_fim_bits_per_byte'))} | "
                        f"{fmt(b.get('middle_l2r_bits_per_byte'))} |")
                    continue
                rows.append(
                    f"| {model} | {fmt(m['val_loss'])} | {bench} | "
                    f"{fmt(b.get('canonical_bits_per_byte'))} | {t} | {r['n']} | "
                    f"{'–' if r.get('prompts_cut') is None else r['prompts_cut']} | "
                    f"{fmt(r['syntax_rate'], True)} | "
                    + " | ".join(fmt(r.get(k), True) for k in ("pass@1", "pass@10", "pass@100",
                                                               "base_pass@1"))
                    + f" | {solved_cell(r.get('solved'))} |")
    return "\n".join(rows + (infill if len(infill) > 3 else []))


def print_summary(results: dict, page: Path) -> None:
    print()
    print(results_table(results))
    print()
    for name, seconds in results["stages"].items():
        if name in results["skipped"]:
            print(f"  {name:24s}  skipped: {results['skipped'][name]}")
        else:
            print(f"  {name:24s} {seconds or 0:8.1f} s")
    total, budget = results["total_seconds"], results["budget_minutes"]
    verdict = "within" if results["within_budget"] else "OVER"
    print(f"  {'total':24s} {total:8.1f} s = {total / 60:.1f} min, {verdict} the budget of "
          f"{budget:g} min")
    print(f"commit {results['commit']} on {results['machine']}")
    print(f"report: {page}")


def run_reference(config: str, overrides: list[str]) -> dict:
    cfg = load_config(ReferenceConfig, config, overrides)
    check_machine(validate(cfg))
    return Reference(cfg, config).run_pipeline()
