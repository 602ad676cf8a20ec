"""Every subcommand, given a missing path or a bad value, exits 2 with one line naming the
problem and no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codegpt.cli import COMMANDS, main

MISSING = "/nonexistent/codegpt-test"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tokenizer, a checkpoint of another vocabulary size, a prep output and a run folder
    without metrics: real inputs of the wrong kind or size."""
    from test_generate import make_checkpoint, make_tokenizer

    root = tmp_path_factory.mktemp("cli")
    tok = make_tokenizer(root)
    ckpt, _ = make_checkpoint(root / "run" / "checkpoints", vocab_size=123)
    bad_samples = root / "bad.jsonl"
    bad_samples.write_text(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    return {"tok": str(tok), "ckpt": str(ckpt), "data": str(root / "data"),
            "bad_samples": str(bad_samples), "root": root}


def cases(f) -> list[tuple[list[str], str]]:
    out = str(f["root"] / "out")
    return [
        (["prep", "nope"], "no data config named 'nope'"),
        (["prep", "default", f"sources=[{{type: local, roots: [{MISSING}]}}]", f"out_dir={out}"],
         MISSING),
        (["prep", "default", "dedup.threshold=2"], "dedup.threshold"),
        (["prep", "default", "executor.tasks=many"], "executor.tasks"),
        (["prep", "default", "sources=[{type: svn}]"], "unknown source type"),
        (["tokenizer", "default", f"data_dir={MISSING}", f"out_dir={out}"], MISSING),
        (["tokenizer", "default", "vocab_size=10"], "vocab_size"),
        (["tokenizer", "default", "vocab_sise=10"], "did you mean 'vocab_size'"),
        (["tokenize", "default", f"data_dir={MISSING}", f"tokenizer={f['tok']}", f"out_dir={out}"],
         MISSING),
        (["tokenize", "default", f"data_dir={f['data']}", f"tokenizer={MISSING}",
          f"out_dir={out}"], MISSING),
        (["tokenize", "default", "val_fraction=1.5"], "val_fraction"),
        (["sft-data", "default", f"data_dir={MISSING}", f"out_dir={out}"], MISSING),
        (["sft-data", "default", "max_body_lines=0"], "max_body_lines"),
        (["sft-data", "default", f"extra_jsonl=[{f['bad_samples']}]", f"out_dir={out}"],
         "bad.jsonl:1: lacks a string 'prompt'"),
        (["train", "nope"], "no train config named 'nope'"),
        (["train", "smoke", f"data_dir={MISSING}", f"out_dir={out}"], MISSING),
        (["train", "smoke", "run.max_steps=0"], "run.max_steps"),
        (["train", "smoke", "optim.lr_max=1"], "did you mean 'optim.lr'"),
        (["train", "smoke", "run.precision=fp8"], "run.precision"),
        (["train", f"{MISSING}.yaml"], MISSING),
        (["show-config", "smoke", "--get", "optim.nope"], "no config key 'optim.nope'"),
        (["show-config", "smoke", "model.n_head=3", "model.d_model=64"], "not divisible"),
        (["plot", MISSING], MISSING),
        (["plot", str(f["root"])], "no metrics"),
        (["reference", "nope"], "no reference config named 'nope'"),
        (["reference", "cpu", "train.out_dir=x"], "train.out_dir is set by the reference run"),
        (["reference", "cpu", "train.optim.lrr=1"], "section train: unknown config key"),
        (["reference", "cpu", "humaneval.runs=[{temperature: 0.2, n: 0}]"], "n must be >= 1"),
        (["report", MISSING], f"no run folder at {MISSING}"),
        (["report", str(f["root"] / "run")], "holds none of the pipeline's stages"),
        (["sample", "--checkpoint", MISSING, "--tokenizer", f["tok"], "--prompt", "x"], MISSING),
        (["sample", "--checkpoint", f["tok"], "--tokenizer", f["tok"], "--prompt", "x"],
         "is not a checkpoint"),
        (["sample", "--checkpoint", f["ckpt"], "--tokenizer", f["tok"], "--prompt", "x"],
         "vocab_size=123"),
        (["sample", "--checkpoint", f["ckpt"], "--tokenizer", MISSING, "--prompt", "x"], MISSING),
        (["sample", "--checkpoint", f["ckpt"], "--tokenizer", f["tok"], "--prompt", "x",
          "--n", "0"], "--n"),
        (["sample", "--checkpoint", f["ckpt"], "--tokenizer", f["tok"], "--prompt", "x",
          "--top-p", "1.5"], "--top-p"),
        (["export", "--checkpoint", MISSING, "--tokenizer", f["tok"], "--out", out], MISSING),
        (["export", "--checkpoint", f["ckpt"], "--tokenizer", f["tok"], "--out", out],
         "vocab_size=123"),
        (["eval", "humaneval", "--samples", MISSING], MISSING),
        (["eval", "humaneval", "--samples", f["bad_samples"], "--out", out], "completion"),
        (["eval", "humaneval"], "give --samples"),
        (["eval", "humaneval", "--checkpoint", MISSING, "--tokenizer", f["tok"], "--out", out],
         MISSING),
        (["eval", "humaneval", "--samples", MISSING, "--timeout", "0"], "sandbox.timeout"),
        (["eval", "humaneval", "--samples", MISSING, "--n", "many"], "sampling.n"),
        (["eval", "nope"], "nope"),
        (["nope"], "nope"),
    ]


def test_the_cases_cover_every_command():
    names = {c.name.split()[0] for c in COMMANDS}
    stand_in = {"tok": "", "ckpt": "", "data": "", "bad_samples": "", "root": Path(MISSING)}
    covered = {argv[0] for argv, _ in cases(stand_in)}
    assert names <= covered


def test_every_command_refuses_bad_input_with_one_line(files, capfd, monkeypatch):
    from codegpt.documents import SCHEMA  # a prep output with one document, for tokenize
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = files["root"] / "data" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"text": "x = 1\n", "id": "a", "repo_name": "r"}],
                                        schema=SCHEMA), data / "00000.parquet")
    monkeypatch.chdir(files["root"])  # nothing a command writes lands in the repository
    capfd.readouterr()
    for argv, expected in cases(files):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        err = capfd.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
        assert expected in lines[0], (argv, lines[0])


def test_the_installed_command_shows_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "codegpt", "train", "smoke",
                           f"data_dir={MISSING}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no meta.json in {MISSING}: not a token-shard folder "
        "(make one with `codegpt tokenize` / `make tokens`)"]


# --- a checkpoint meets a tokenizer -------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizers(files):
    """A run whose checkpoint records the hash of its tokenizer, an older run whose checkpoint
    records none, and another tokenizer of the same size trained on other data."""
    from types import SimpleNamespace

    from test_generate import make_checkpoint, make_tokenizer

    from codegpt.tokenizer.bpe import load_tokenizer, tokenizer_hash

    root = files["root"]
    other = make_tokenizer(root / "other", other=True)
    vocab = load_tokenizer(files["tok"]).get_vocab_size()
    assert load_tokenizer(other).get_vocab_size() == vocab
    good, _ = make_checkpoint(root / "good" / "checkpoints", vocab, tokenizer=Path(files["tok"]))
    older, _ = make_checkpoint(root / "older" / "checkpoints", vocab)
    return SimpleNamespace(tok=files["tok"], other=str(other), run=str(root / "good"),
                           good=str(good), older=str(older), tok_hash=tokenizer_hash(files["tok"]),
                           other_hash=tokenizer_hash(other))


def test_a_checkpoint_refuses_a_same_size_tokenizer_of_other_data(files, tokenizers, capfd,
                                                                  caplog, monkeypatch):
    """eval humaneval (sampling and likelihood), sample and export: one line naming the
    checkpoint, the tokenizer and both hashes, exit 2; the right tokenizer works; a checkpoint
    that records no hash is checked by the vocabulary size with a warning."""
    from codegpt.tokenizer.bpe import tokenizer_hash

    t = tokenizers
    monkeypatch.chdir(files["root"])
    out = files["root"] / "tok_out"
    model = ["--checkpoint", t.run]  # a run folder: its newest checkpoint, t.good
    for argv in (["sample", *model, "--tokenizer", t.other, "--prompt", "x"],
                 ["eval", "humaneval", *model, "--tokenizer", t.other, "--limit", "1", "--n", "1",
                  "--out", str(out / "eval")],
                 ["eval", "humaneval", "--likelihood-only", *model, "--tokenizer", t.other,
                  "--limit", "1", "--out", str(out / "eval")],
                 ["export", *model, "--tokenizer", t.other, "--out", str(out / "hf")]):
        capfd.readouterr()
        code = main(argv)
        lines = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (argv, lines)
        for part in ("error: checkpoint " + t.good, t.other, t.tok_hash[:12], t.other_hash[:12]):
            assert part in lines[0], (argv, lines[0])
    # nothing sampled, scored or exported
    assert not (out / "hf").exists() and not (out / "eval" / "samples.jsonl").exists()
    assert not (out / "eval" / "results.json").exists()

    argv = ["sample", *model, "--tokenizer", t.tok, "--prompt", "def f(", "--max-new-tokens", "3"]
    assert main(argv) == 0 and "--- sample 0" in capfd.readouterr().out
    assert main(["eval", "humaneval", "--likelihood-only", *model, "--tokenizer", t.tok,
                 "--limit", "1", "--out", str(out / "eval")]) == 0
    assert main(["export", *model, "--tokenizer", t.tok, "--out", str(out / "hf")]) == 0
    assert tokenizer_hash(out / "hf" / "tokenizer.json") == t.tok_hash  # the bundled one
    assert not [r for r in caplog.records if "no tokenizer hash" in r.getMessage()]

    caplog.clear()
    argv = ["sample", "--checkpoint", t.older, "--tokenizer", t.other, "--prompt", "x",
            "--max-new-tokens", "2"]
    assert main(argv) == 0  # an older checkpoint: the vocabulary size alone, said out loud
    assert [r.levelname for r in caplog.records if "records no tokenizer hash" in r.getMessage()
            and t.older in r.getMessage()] == ["WARNING"]
