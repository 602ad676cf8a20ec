"""HumanEval harness: the pass@k estimator, reranking, and scoring in the sandbox."""

import json
from math import comb

import pytest

from codegpt.eval.humaneval import (EvalError, evaluate_samples_file, load_problems, pass_at_k,
                               program, read_samples, summarize)


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
            samples.append({"task_id": task, "completion": "", "passed": bool(p),
                            "mean_logp": -float(i) if task != "A" else [-3.0, -0.5, -1.0, -2.0][i]})
    out = summarize(samples, ks=(1, 2, 10))
    assert out["pass@1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["pass@2"] == pytest.approx(((1 - comb(2, 2) / comb(4, 2)) + 0 + 1) / 3)
    assert "pass@10" not in out  # not enough samples per problem
    # reranked: A's best mean_logp is sample 1 (failed), B fails, C passes
    assert out["reranked_pass@1"] == pytest.approx(1 / 3)


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
        evaluate_samples_file(other)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_canonical_solutions_pass_and_empty_completions_fail(tmp_path):
    problems = load_problems()
    canonical = write_jsonl(tmp_path / "canonical.jsonl", [
        {"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()])
    results = evaluate_samples_file(canonical, tmp_path / "c", timeout=10.0)
    assert results["pass@1"] == 1.0 and results["problems"] == 164
    empty = write_jsonl(tmp_path / "empty.jsonl", [
        {"task_id": t, "completion": ""} for t in problems])
    assert evaluate_samples_file(empty, tmp_path / "e")["pass@1"] == 0.0


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
    results = evaluate_samples_file(path)
    assert results["pass@1"] == pytest.approx(1 / 3)
    assert results["pass@2"] == pytest.approx(1 - comb(2, 2) / comb(3, 2))
    assert results["reranked_pass@1"] == 0.0  # the highest mean_logp is the wrong one
    scored = read_samples(path)
    assert [s["passed"] for s in scored] == [True, False, False] * 3
    assert json.loads((tmp_path / "results.json").read_text())["pass@1"] == results["pass@1"]
    # a scored file is not run again: tamper with a result and it is kept as is
    scored[1]["passed"] = True
    write_jsonl(path, scored)
    assert evaluate_samples_file(path)["pass@1"] == pytest.approx(4 / 9)


def test_generation_batches_problems_and_resumes_the_same_samples(tmp_path):
    """With n smaller than the batch, several problems share a batch; samples do not depend on
    that, and an interrupted samples file is completed with the same samples."""
    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.eval.humaneval import generate_samples
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

    from codegpt.eval.humaneval import generate_samples
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
