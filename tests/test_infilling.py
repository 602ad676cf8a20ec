"""HumanEval infilling (codegpt.infilling, `codegpt eval infilling`): the derived single-line and
multi-line sets, their assembly in the sandbox, the human-eval-infilling file layout, and an
evaluation of a checkpoint with the middles' likelihood with and without the suffix."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from codegpt.cli import main
from codegpt.errors import DataError
from codegpt.eval.generate import fim_prompt_ids
from codegpt.eval.humaneval import program, score_samples
from codegpt.eval.likelihood import infill_likelihood, token_logprobs
from codegpt.infilling import SETS, load_infilling, spans
from codegpt.problems import load_problems
from codegpt.tokenizer.bpe import load_tokenizer

from test_generate import make_checkpoint, make_tokenizer

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@pytest.fixture(scope="module")
def humaneval():
    return load_problems(None, fields=FIELDS)


@pytest.fixture(scope="module")
def sets():
    return {name: load_infilling(name) for name in SETS}


def source_task(task_id: str) -> str:
    """SingleLineInfilling/HumanEval/12/L3 -> HumanEval/12."""
    return task_id.split("/", 1)[1].rsplit("/", 1)[0]


def test_the_derived_sets_have_the_published_sizes_and_rebuild_each_canonical_program(
        sets, humaneval):
    assert {name: len(p) for name, p in sets.items()} == {"single-line": 1033,
                                                           "multi-line": 5815}
    assert {source_task(t) for t in sets["single-line"]} == set(humaneval)
    for name, problems in sets.items():
        assert problems == load_infilling(name)  # deterministic
        for task_id, p in problems.items():
            original = humaneval[source_task(task_id)]
            assert p["prompt"] + p["canonical_solution"] + p["suffix"] == \
                original["prompt"] + original["canonical_solution"].rstrip() + "\n"
            assert p["canonical_solution"].strip() and p["canonical_solution"].endswith("\n")
            assert p["test"] == original["test"] and p["entry_point"] == original["entry_point"]
            lines = p["canonical_solution"].rstrip("\n").split("\n")
            assert lines[0].strip() and lines[-1].strip()  # a span starts and ends on code
            if name == "single-line":
                assert len(lines) == 1 and task_id.startswith("SingleLineInfilling/")
    assert "MultiLineInfilling/HumanEval/0/L0_L2" in sets["multi-line"]
    # spans: blank lines are never masked alone, and are inside multi-line spans
    assert spans("a\n\n  b\n", False) == [(0, 0), (2, 2)]
    assert spans("a\n\n  b\n", True) == [(0, 0), (0, 2), (2, 2)]


def test_every_canonical_middle_passes_and_an_empty_return_line_fails(sets, humaneval):
    """Every derived task assembles to its problem's canonical program (above), so the 164
    distinct programs are run: all pass. An empty middle in place of a `return` line fails."""
    one_per_problem = {}
    for task_id, p in sets["single-line"].items():
        one_per_problem.setdefault(source_task(task_id), (task_id, p))
    distinct = {program(p, p["canonical_solution"]) for _, p in one_per_problem.values()}
    assert len(distinct) == 164
    rows = [{"task_id": t, "completion": p["canonical_solution"]}
            for t, p in one_per_problem.values()]
    scored = score_samples(rows, sets["single-line"], timeout=10.0, progress=False)
    assert [r["task_id"] for r in scored if not r["passed"]] == []
    returns = {t: p for t, p in sets["single-line"].items()
               if p["canonical_solution"].strip().startswith("return ")
               and int(source_task(t).split("/")[1]) < 30}
    assert len(returns) > 20
    empty = score_samples([{"task_id": t, "completion": ""} for t in returns],
                          sets["single-line"], timeout=10.0, progress=False)
    assert [r["task_id"] for r in empty if r["passed"]] == []


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_in_the_human_eval_infilling_layout_and_a_bad_row(tmp_path, sets):
    rows = [dict(p, task_id=f"RandomSpanInfilling/HumanEval/{i}/0")
            for i, p in enumerate(list(sets["single-line"].values())[:3])]
    problems = load_infilling("single-line", write(tmp_path / "ok.jsonl", rows))
    assert list(problems) == [r["task_id"] for r in rows]
    bad = [rows[0], {k: v for k, v in rows[1].items() if k != "suffix"}]
    with pytest.raises(DataError, match=r"bad.jsonl:2 lacks string field\(s\) \['suffix'\]"):
        load_infilling("single-line", write(tmp_path / "bad.jsonl", bad))
    with pytest.raises(DataError, match="does not exist"):
        load_infilling("single-line", tmp_path / "missing.jsonl")


def test_cli_scores_a_samples_file_with_exact_match(tmp_path, sets, capsys):
    tasks = list(sets["multi-line"].items())[:12]
    rows = []
    for i, (t, p) in enumerate(tasks):
        right = p["canonical_solution"]
        reindented = right.rstrip("\n") + "  \n"  # trailing whitespace: still an exact match
        rows += [{"task_id": t, "completion": right if i % 2 else reindented},
                 {"task_id": t, "completion": "    pass\n" if i % 3 else ""}]
    samples = write(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "infilling", "--benchmark", "multi-line", "--samples", str(samples),
                 "--out", str(out), "--allow-missing"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["exact_match"] == pytest.approx(0.5)
    assert 0.5 <= results["pass@1"] < 1 and results["benchmark"] == \
        "HumanEval multi-line infilling"
    assert results["problems"] == 12 and not results["complete"]
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "pass@1" in printed
    # a samples file's rows are middles: the suffix is part of every program
    assert (out / "codegpt-output.json").is_file()
    assert json.loads((out / "codegpt-output.json").read_text())["stage"] == "eval infilling"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("infill")
    tok_dir = make_tokenizer(root)
    tok = load_tokenizer(tok_dir)
    fim, _ = make_checkpoint(root / "fim", tok.get_vocab_size(), tokenizer=tok_dir,
                             fim=(0.5, 0.5), block_size=256)
    plain, _ = make_checkpoint(root / "plain", tok.get_vocab_size(), tokenizer=tok_dir,
                               block_size=256)
    return tok_dir, tok, fim, plain


def test_a_checkpoint_s_infilling_with_and_without_the_suffix(tmp_path, checkpoints, capsys):
    tok_dir, tok, fim, plain = checkpoints
    base = ["eval", "infilling", "--tokenizer", str(tok_dir), "--limit", "4", "--n", "2",
            "--max-new-tokens", "6", "--temperature", "0.8"]
    assert main([*base, "--checkpoint", str(fim), "--out", str(tmp_path / "fim")]) == 0
    r = json.loads((tmp_path / "fim" / "results.json").read_text())
    assert r["fim_order"] == "psm" and r["fim_trained"]["fim_rate"] == 0.5
    assert r["middle_fim_bits_per_byte"] > 0 and r["middle_l2r_bits_per_byte"] > 0
    assert r["middle_fim_tokens"] == r["middle_l2r_tokens"]  # the same middle tokens scored
    assert r["problems"] == 4 and r["samples"] == 8 and "exact_match" in r
    printed = capsys.readouterr().out
    assert "with the suffix (psm)" in printed and "left to right" in printed
    lines = (tmp_path / "fim" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 8
    # a model that never learned FIM: left to right only, its middles cut at the line's end
    assert main([*base, "--checkpoint", str(plain), "--out", str(tmp_path / "plain")]) == 0
    r = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert r["fim_order"] == "l2r" and r["fim_trained"] is None
    assert "middle_fim_bits_per_byte" not in r and r["middle_l2r_bits_per_byte"] > 0
    for line in (tmp_path / "plain" / "samples.jsonl").read_text().splitlines():
        middle = json.loads(line)["completion"]
        assert middle.endswith("\n") and middle.count("\n") == 1
    # an order forced on a model that never learned FIM runs (with a warning), and a FIM
    # model can be measured left to right too
    assert main([*base, "--checkpoint", str(plain), "--out", str(tmp_path / "x"),
                 "--fim-mode", "spm"]) == 0
    assert json.loads((tmp_path / "x" / "results.json").read_text())["fim_order"] == "spm"
    assert main([*base, "--checkpoint", str(fim), "--out", str(tmp_path / "y"),
                 "fim_mode=l2r"]) == 0
    assert json.loads((tmp_path / "y" / "results.json").read_text())["fim_order"] == "l2r"


def test_the_middle_likelihood_scores_the_middle_after_the_fim_prompt(checkpoints):
    tok_dir, tok, fim, _ = checkpoints
    from codegpt.checkpoint import load_checkpoint_model

    model, _ = load_checkpoint_model(fim)
    problems = dict(list(load_infilling("single-line").items())[:3])
    got = infill_likelihood(model, tok, problems, spm=True, progress=False)
    per = defaultdict(dict)
    for t, p in problems.items():
        mid = tok.encode(p["canonical_solution"], add_special_tokens=False).ids
        head = fim_prompt_ids(tok, p["prompt"], p["suffix"], True, model.config.block_size,
                              len(mid))
        nats = float(-token_logprobs(model, head + mid, len(head)).sum())
        per[t] = nats
        assert got["middle_fim_per_problem"][t]["nats"] == pytest.approx(nats, rel=1e-6)
        assert got["middle_fim_per_problem"][t]["tokens"] == len(mid)
    assert torch.isfinite(torch.tensor(got["middle_fim_bits_per_byte"]))
