"""Evaluation is configured like every other stage: ``configs/eval/*.yaml`` loaded with overrides,
``codegpt eval humaneval``'s flags as overrides of it, and the reference run's humaneval section
as an eval config. The samples of a recorded run (made before evaluation had a config, with its
flags) come out the same from the flags, from key=value overrides and from a config file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from codegpt.cli import main
from codegpt.config import ConfigError, find_named_config, load_config, to_dict
from codegpt.eval.config import EvalConfig, InfillConfig, SamplingSection
from codegpt.reference import ReferenceConfig, eval_raws, validate
from codegpt.tokenizer.bpe import load_tokenizer

from test_generate import make_checkpoint, make_tokenizer

RECORDED = Path(__file__).parent / "data" / "eval_recorded.json"
# flag -> the key it overrides, as a user reads it in the config file
AS_OVERRIDES = {"--n": "sampling.n", "--temperature": "sampling.temperature",
                "--top-p": "sampling.top_p", "--max-new-tokens": "sampling.max_new_tokens",
                "--limit": "limit", "--seed": "sampling.seed",
                "--batch-size": "sampling.batch_size", "--no-heal": "sampling.heal=false",
                "--no-likelihood": "likelihood=skip"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-config")
    tok = make_tokenizer(root)
    make_checkpoint(root / "run" / "checkpoints", load_tokenizer(tok).get_vocab_size(),
                    tokenizer=tok)
    return root / "run", tok


def overrides_of(flags: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(flags):
        key = AS_OVERRIDES[flags[i]]
        if "=" in key:
            out.append(key)
            i += 1
        else:
            out.append(f"{key}={flags[i + 1]}")
            i += 2
    return out


def samples(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return [{"task_id": r["task_id"], "completion": r["completion"],
             "mean_logp": round(r["mean_logp"], 5)} for r in rows]


@pytest.mark.parametrize("name", ["sampled", "greedy"])
def test_flags_overrides_and_a_config_file_give_the_recorded_samples(model, tmp_path, name):
    run, tok = model
    recorded = json.loads(RECORDED.read_text())[name]
    flags = recorded["flags"]
    paths = ["--checkpoint", str(run), "--tokenizer", str(tok)]
    as_flags = main(["eval", "humaneval", *paths, "--out", str(tmp_path / "flags"), *flags])
    overrides = overrides_of(flags)
    as_overrides = main(["eval", "humaneval", "humaneval", f"checkpoint={run}",
                         f"tokenizer={tok}", f"out_dir={tmp_path / 'overrides'}", *overrides])
    raw = yaml.safe_load(find_named_config("eval", "humaneval").read_text())
    for item in overrides:
        key, value = item.split("=")
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    raw.update(checkpoint=str(run), tokenizer=str(tok), out_dir=str(tmp_path / "file"))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    as_file = main(["eval", "humaneval", str(tmp_path / "mine.yaml")])
    assert as_flags == as_overrides == as_file == 0
    for folder in ("flags", "overrides", "file"):
        assert samples(tmp_path / folder) == recorded["samples"], folder
    settings = json.loads((tmp_path / "file" / "results.json").read_text())
    assert settings["n"] == int(flags[flags.index("--n") + 1])


def test_every_shipped_eval_config_loads_and_flags_are_overrides(model):
    run, tok = model
    paths = [f"checkpoint={run}", f"tokenizer={tok}"]
    for path in sorted(find_named_config("eval", "humaneval").parent.glob("*.yaml")):
        cfg = load_config(InfillConfig if path.stem == "infilling" else EvalConfig, path, paths)
        assert cfg.sampling.n >= 1 and cfg.out_dir
    pass1 = load_config(EvalConfig, "humaneval", paths)
    assert (pass1.sampling.temperature, pass1.sampling.top_p, pass1.sampling.n,
            pass1.sampling.max_new_tokens) == (0.2, 0.95, 200, 384)
    pass100 = load_config(EvalConfig, "humaneval-pass100", paths)
    assert pass100.sampling.temperature == 0.8
    assert to_dict(pass100) == to_dict(load_config(EvalConfig, "humaneval",
                                                   [*paths, "sampling.temperature=0.8"]))
    # the sampling section's defaults are the only ones: the API's and `codegpt sample`'s
    assert SamplingSection().top_p == pass1.sampling.top_p


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "1.5"], "sampling.top_p must be in (0, 1], got 1.5"),
    (["--n", "0"], "sampling.n must be >= 1, got 0"),
    (["--temperature", "nan"], "sampling.temperature must be a finite number >= 0, got nan"),
    (["sampling.max_new_tokens=many"], "config key 'sampling.max_new_tokens' expects an "
                                       "integer >= 1, got 'many'"),
    (["--dtype", "fp8"], "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
    (["sampling.tempreature=1"], "unknown config key 'sampling.tempreature'; did you mean "
                                 "'sampling.temperature'?"),
    (["--samples", "x.jsonl"], "give samples=FILE or checkpoint=DIR, not both"),
])
def test_bad_settings_exit_2_with_one_line_naming_the_key(model, tmp_path, capfd, argv, message):
    run, tok = model
    capfd.readouterr()
    try:  # a flag's bad value stops the parser (the flag named), an override the loader
        code = main(["eval", "humaneval", "--checkpoint", str(run), "--tokenizer", str(tok),
                     "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:
        code = e.code
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    if argv[0].startswith("--") and argv[0] != "--samples":
        assert f"argument {argv[0]}" in err[0]
    assert not (tmp_path / "out").exists()


def test_no_model_and_no_samples_is_refused(tmp_path, capfd):
    assert main(["eval", "humaneval", "--out", str(tmp_path / "o")]) == 2
    assert "give --samples FILE, or --checkpoint DIR and --tokenizer DIR" in capfd.readouterr().err


def test_the_reference_run_passes_its_humaneval_section_as_an_eval_config(tmp_path):
    cfg = load_config(ReferenceConfig, "cpu", [f"out_dir={tmp_path / 'run'}",
                                               "humaneval.sampling.top_k=7"])
    raws = eval_raws(cfg, tmp_path / "run")
    assert list(raws) == ["humaneval/base/t0.2", "humaneval/base/t0.8", "humaneval/sft/t0.2",
                          "humaneval/sft/t0.8", "mbpp/sft/t0.1", "infilling/base/t0.2",
                          "infilling/sft/t0.2"]
    evals = validate(cfg)
    mbpp = evals[4]  # the MBPP section over configs/eval/mbpp.yaml: the fine-tuned model
    assert (mbpp.benchmark, mbpp.sampling.temperature, mbpp.sampling.n, mbpp.checkpoint,
            mbpp.sampling.stop[1], mbpp.out_dir) == (
        "mbpp", 0.1, 5, str(tmp_path / "run" / "sft"), "\nassert",
        str(tmp_path / "run" / "mbpp" / "sft" / "t0.1"))
    infill = evals[5]  # the infilling section over configs/eval/infilling.yaml
    assert (type(infill).__name__, infill.benchmark, infill.limit, infill.sampling.n,
            infill.checkpoint) == ("InfillConfig", "single-line", 300, 1,
                                   str(tmp_path / "run" / "train"))
    with pytest.raises(ConfigError, match=r"mbpp.sampling.n is set for each run by mbpp.runs"):
        load_config(ReferenceConfig, "cpu", ["mbpp.sampling.n=3"])
    with pytest.raises(ConfigError, match=r"mbpp_plus.models\[0\] must be one of base, sft"):
        load_config(ReferenceConfig, "cpu", ["mbpp_plus.models=[huge]"])
    first, second = evals[0], evals[1]
    assert (first.sampling.temperature, first.sampling.n, first.sampling.max_new_tokens,
            first.sampling.top_k) == (0.2, 10, 128, 7)
    assert (second.sampling.temperature, second.sampling.n) == (0.8, 20)
    assert (first.likelihood, second.likelihood) == ("with", "skip")  # measured once per model
    assert first.checkpoint == str(tmp_path / "run" / "train")
    assert evals[2].checkpoint == str(tmp_path / "run" / "sft")
    assert first.out_dir == str(tmp_path / "run" / "humaneval" / "base" / "t0.2")
    for key in ("sampling.n=5", "sampling.temperature=0.5", "n=5"):
        with pytest.raises(ConfigError, match=r"humaneval.sampling.(n|temperature) is set for "
                                              "each run by humaneval.runs"):
            load_config(ReferenceConfig, "cpu", [f"humaneval.{key}"])
    with pytest.raises(ConfigError, match="section humaneval: sampling.top_p must be in "
                                          r"\(0, 1\], got 2.0"):
        validate(load_config(ReferenceConfig, "cpu", ["humaneval.sampling.top_p=2"]))


def test_a_humaneval_section_of_the_old_keys_still_loads(tmp_path, caplog):
    cfg = load_config(ReferenceConfig, None, [f"out_dir={tmp_path}", "humaneval.top_p=0.9",
                                              "humaneval.max_new_tokens=64",
                                              "humaneval.timeout=3"])
    with caplog.at_level(logging.WARNING):
        first = validate(cfg)[0]
    assert (first.sampling.top_p, first.sampling.max_new_tokens, first.sandbox.timeout) == (
        0.9, 64, 3.0)
    assert "config key 'top_p' is now 'sampling.top_p'" in caplog.text
