"""Every config value is checked by its field's declaration (``codegpt.config.setting``) before
any work starts: a value outside the declared range, NaN or inf, or a value of the wrong type
exits 2 with one line that names the key. The table of bad values is generated from the
declarations, so a new field is covered as soon as it is declared."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from codegpt.cli import main
from codegpt.config import (ConfigError, apply_renames, field_check, from_dict, load_config,
                            parse_overrides, setting, to_dict)
from codegpt.errors import DataError, ShardError
from codegpt.eval.config import EvalConfig, InfillConfig
from codegpt.reference import (EVAL_PATH_KEYS, PATH_KEYS, EvalPlan, ReferenceConfig, SamplingRun,
                               stage_config_classes)
from codegpt.sft_data import SftDataConfig
from codegpt.tokenizer.bpe import TokenizerConfig
from codegpt.tokenizer.encode import TokenizeConfig
from codegpt.train.config import TrainConfig
from data_prep.config import PrepConfig

from conftest import SMOKE

MISSING = "/nonexistent/codegpt-test"
# (command, base config, its config class): every stage config the CLI loads
COMMANDS = [("prep", "default", PrepConfig), ("tokenizer", "default", TokenizerConfig),
            ("tokenize", "default", TokenizeConfig), ("sft-data", "default", SftDataConfig),
            ("train", "smoke", TrainConfig), ("show-config", "smoke", TrainConfig),
            ("reference", "cpu", ReferenceConfig), ("eval humaneval", "humaneval", EvalConfig),
            ("eval infilling", "infilling", InfillConfig),
            ("reference", "cpu", EvalPlan)]  # the humaneval section's models and runs


# --- the table, from the declarations --------------------------------------------------------

@dataclasses.dataclass
class Leaf:
    key: str                  # the dotted key, as a message names it
    ftype: typing.Any         # the scalar type (a list field's item type)
    check: typing.Any         # the field's Check, or None
    is_list: bool             # a list of scalars: the value goes in [...]
    item_of: str | None       # a list of dataclasses: the list's key (one item is given)


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """Every leaf field of a config class, nested sections and lists of sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        ftype, key = hints[f.name], prefix + f.name
        origin, args = typing.get_origin(ftype), typing.get_args(ftype)
        if dataclasses.is_dataclass(ftype):
            out += leaves(ftype, key + ".")
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            out.append(Leaf(key, list, None, False, None))
            out += [dataclasses.replace(leaf, item_of=key) for leaf in leaves(args[0])]
        elif origin is list:
            out.append(Leaf(key, args[0] if args else typing.Any, field_check(f), True, None))
        else:
            out.append(Leaf(key, ftype, field_check(f), False, None))
    return out


def outside(check, ftype) -> list[typing.Any]:
    """A value just outside each declared bound."""
    values = []
    step = 1 if ftype is int else 1e-6
    if check.ge is not None:
        values.append(check.ge - step * max(1, abs(check.ge)) if ftype is float else check.ge - 1)
    if check.gt is not None:
        values.append(check.gt)
    if check.le is not None:
        values.append(check.le + step * max(1, abs(check.le)) if ftype is float else check.le + 1)
    if check.lt is not None:
        values.append(check.lt)
    return [v for v in values if not check.allows(ftype(v))]


def bad_values(leaf: Leaf) -> list[str]:
    """Override texts of values the field must refuse."""
    values: list[str] = []
    if leaf.check is not None and (leaf.check.bounded):
        values += [repr(v) for v in outside(leaf.check, leaf.ftype)]
    if leaf.ftype is float:
        values += ["nan", "inf", "-inf"]
    if leaf.ftype in (int, float):
        values.append("abc")
    elif leaf.ftype is bool:
        values.append("maybe")
    elif leaf.ftype is str and leaf.check is not None:
        values.append("not-a-choice")  # outside the choices or the pattern
    elif leaf.ftype in (dict, list):
        values.append("abc")
    if leaf.is_list:
        values = [f"[{v}]" for v in values] + ["abc"]
    return values


def override(leaf: Leaf, value: str) -> str:
    if leaf.item_of:  # one item of a list of sections
        return f"{leaf.item_of}=[{{{leaf.key}: {value}}}]"
    return f"{leaf.key}={value}"


def named(leaf: Leaf) -> str:
    return f"{leaf.item_of}[0].{leaf.key}" if leaf.item_of else leaf.key


def cases() -> list[tuple[list[str], str, list[str]]]:
    """(argv, a pattern the error line must match: the key, named as the config's own key,
    and words it must hold: the bad value and what is allowed) for every bad value of every
    leaf."""
    out = []
    runs = [(command, base, cls, None) for command, base, cls in COMMANDS]
    runs += [("reference", "cpu", cls, section)  # the reference run's stage sections
             for section, cls in stage_config_classes().items()]
    for command, base, cls, section in runs:
        for leaf in leaves(cls):
            paths = EVAL_PATH_KEYS if cls is EvalConfig else PATH_KEYS
            if section and leaf.key.split(".")[0] in paths:
                continue  # the reference run sets the paths
            if section and leaf.key in ("sampling.n", "sampling.temperature"):
                continue  # humaneval.runs sets them (tests/test_eval_config.py)
            # the humaneval section's own keys (models, runs), checked as the config loads
            plan = "humaneval." if cls is EvalPlan else ""
            for value in bad_values(leaf):
                arg = plan + override(leaf, value)
                words = [] if leaf.is_list and value == "abc" else [value.strip("[]")]
                if leaf.check is not None and words:
                    words.append(leaf.check.describe())
                lead = "^error: " if section is None else f"section {section}: "
                out.append(([*command.split(), base, f"{section}.{arg}" if section else arg],
                             key_pattern(lead, plan + named(leaf)), words))
    return out


def key_pattern(lead: str, key: str) -> str:
    """``LEAD KEY must be ...`` or ``LEAD config key 'KEY' expects ...`` (a list's item:
    ``KEY[0]``)."""
    return rf"{lead}(config key ')?{re.escape(key)}(\[0\])?('? expects| must be)"


def test_the_table_covers_every_stage_and_kind_of_value():
    table = cases()
    assert len(table) > 300
    joined = [" ".join(argv) for argv, _, _ in table]
    assert {argv[0] for argv, _, _ in table} == {c.split()[0] for c, _, _ in COMMANDS}
    for needle in ("optim.lr=nan", "model.n_head=0", "checkpoint.keep_last=0",
                   "filters.max_size_bytes=0", "dedup.num_perm=0", "humaneval.sampling.top_p=1.000001",
                   "humaneval.device=not-a-choice", "sampling.top_k=-1", "executor.start_method=not-a-choice",
                   "humaneval.runs=[{n: 0}]", "tokenizer.min_frequency=-1", "run.compile=maybe",
                   "train.optim.grad_clip=0", "sft_data.doctest_timeout=nan", "space_runs=[0]"):
        assert any(needle in j for j in joined), needle


def test_every_bad_value_exits_2_with_one_line_naming_the_key(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # nothing a command could write lands in the repository
    capfd.readouterr()
    for argv, pattern, words in cases():
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capfd.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (argv, code, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err[-2000:])
        assert re.search(pattern, lines[0]), (argv, lines[0])
        assert all(w in lines[0] for w in words), (argv, words, lines[0])
    assert not any(tmp_path.iterdir())  # every command stopped before writing anything


def test_every_numeric_field_declares_a_range_and_every_default_passes_it():
    classes = {cls for _, _, cls in COMMANDS} | set(stage_config_classes().values())
    for cls in classes:
        default = cls()
        for leaf in leaves(cls):
            if leaf.item_of:
                continue  # the items' class is checked below
            if leaf.ftype in (int, float):
                assert leaf.check is not None and (leaf.check.bounded or leaf.check.choices), \
                    f"{cls.__name__}.{leaf.key} declares no range"
            value = default
            for part in leaf.key.split("."):
                value = getattr(value, part)
            if leaf.check is not None:
                for v in value if leaf.is_list else [value]:
                    assert leaf.check.allows(v), (cls.__name__, leaf.key, v)
        # the defaults go through the loader unchanged
        assert from_dict(cls, to_dict(default)) == default
    for cls in (EvalPlan, SamplingRun):
        for leaf in leaves(cls):
            if leaf.ftype in (int, float):
                assert leaf.check is not None and leaf.check.bounded, (cls.__name__, leaf.key)
        assert from_dict(cls, to_dict(cls())) == cls()


def test_messages_name_the_key_the_value_and_what_is_allowed():
    for overrides, message in [
        (["optim.lr=nan"], "optim.lr must be a finite number > 0, got nan"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1), got 1.5"),
        (["run.precision=fp8"], "run.precision must be one of auto, fp32, bf16, got 'fp8'"),
        (["model.n_layer=two"], "config key 'model.n_layer' expects an integer >= 1, got 'two'"),
        (["optim.beta1=5"], "optim.beta1 must be in [0, 1), got 5.0"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(TrainConfig, SMOKE, overrides)
        assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"executor.workers must be -1 \(one per core\) or >= 1, "
                                          "got 0"):
        load_config(PrepConfig, "default", ["executor.workers=0"])
    with pytest.raises(ConfigError, match=r"space_runs\[1\] must be in \[1, 1024\], got 0"):
        load_config(TokenizerConfig, None, ["space_runs=[2, 0]"])


# --- string values are text --------------------------------------------------------------------

@pytest.mark.parametrize("text", ["0755", "1:30", "/x/a #b", "true", "null", "[a]", "~"])
def test_a_string_override_keeps_its_text(text):
    assert load_config(TrainConfig, SMOKE, [f"out_dir={text}"]).out_dir == text
    assert load_config(TrainConfig, SMOKE, [f"run.resume={text}"]).run.resume == text
    assert load_config(PrepConfig, "default", [f"out_dir={text}"]).out_dir == text
    assert parse_overrides([f"model.size={text}", f"model.init_from={text}"], TrainConfig) == \
        {"model": {"size": text, "init_from": text}}
    assert parse_overrides([f"output.dir={text}"], PrepConfig) == {"output": {"dir": text}}


def test_a_string_override_keeps_its_text_inside_a_reference_section():
    cfg = load_config(ReferenceConfig, "cpu", ["train.run.resume=0755", "sft.model.size=1:30",
                                               "tokens.config=0755", "out_dir=/x/a #b",
                                               "train.optim.lr=0.001"])
    assert cfg.train["run"]["resume"] == "0755" and cfg.sft["model"]["size"] == "1:30"
    assert cfg.tokens["config"] == "0755" and cfg.out_dir == "/x/a #b"
    assert cfg.train["optim"]["lr"] == 0.001  # other keys are still read as YAML
    assert parse_overrides(["humaneval.device=0755"], ReferenceConfig) == \
        {"humaneval": {"device": "0755"}}


def test_a_number_for_a_string_field_in_a_yaml_file_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: 0755\n")
    with pytest.raises(ConfigError, match="'out_dir' expects a string, got the number 493: put "
                                          "the value in quotes"):
        load_config(TrainConfig, path)
    path.write_text("out_dir: '0755'\n")
    assert load_config(TrainConfig, path).out_dir == "0755"


# --- renamed keys ------------------------------------------------------------------------------

def test_the_renamed_prep_keys_still_load_with_a_warning(tmp_path, caplog):
    cfg = load_config(PrepConfig, "default", ["output.dir=elsewhere", "output.reject_samples=7"])
    assert cfg.out_dir == "elsewhere" and cfg.reject_samples == 7
    assert "config key 'output.dir' is now 'out_dir'" in caplog.text
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"output": {"dir": "old-out", "reject_samples": 2}}))
    cfg = load_config(PrepConfig, path)
    assert cfg.out_dir == "old-out" and cfg.reject_samples == 2
    raw = {"output": {"dir": "x"}, "dedup": {"seed": 3}}
    assert apply_renames(raw, PrepConfig.RENAMED) == {"out_dir": "x", "dedup": {"seed": 3}}
    assert raw == {"output": {"dir": "x"}, "dedup": {"seed": 3}}  # the input is not changed
    # a section that still holds other keys keeps them
    assert apply_renames({"run": {"dir": "r", "seed": 1}}, TrainConfig.RENAMED) == \
        {"run": {"seed": 1}, "out_dir": "r"}


# --- the eval and sample flags -----------------------------------------------------------------

def one_line_error(argv, capfd) -> str:
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = capfd.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-p", "nan"], "--top-p"), (["--timeout", "inf"], "--timeout"),
    (["--device", "quantum"], "cpu, cuda, cuda:N or mps"), (["--device", "cuda:x"], "--device"),
])
def test_eval_flags_refuse_nan_inf_and_unknown_devices(flags, words, capfd):
    line = one_line_error(["eval", "humaneval", "--samples", MISSING, *flags], capfd)
    assert words in line and flags[1] in line


@pytest.mark.parametrize("flags", [["--temperature", "nan"], ["--temperature", "inf"],
                                   ["--device", "quantum"], ["--device", "gpu"]])
def test_sample_flags_refuse_nan_inf_and_unknown_devices(flags, capfd):
    line = one_line_error(["sample", "--checkpoint", MISSING, "--tokenizer", MISSING,
                           "--prompt", "x", *flags], capfd)
    assert flags[0] in line and flags[1] in line


def test_cuda_is_refused_up_front_without_cuda(monkeypatch, capfd, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(["sample", "--checkpoint", MISSING, "--tokenizer", MISSING,
                           "--prompt", "x", "--device", "cuda"], capfd)
    assert "no CUDA device" in line
    line = one_line_error(["eval", "humaneval", "--samples", MISSING, "--device", "cuda:1"],
                          capfd)
    assert "no CUDA device" in line
    monkeypatch.chdir(tmp_path)
    assert main(["reference", "cpu", "humaneval.device=cuda"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "humaneval.device=cuda but this machine has no CUDA" in lines[0]
    assert not any(tmp_path.iterdir())


# --- data that does not match its contract -----------------------------------------------------

def write_docs(folder: Path, rows: list[dict]) -> Path:
    from codegpt.documents import SCHEMA

    (folder / "data").mkdir(parents=True)
    path = folder / "data" / "00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def test_a_null_text_is_a_data_error_naming_the_shard(tmp_path, monkeypatch, capfd):
    from codegpt.documents import read_documents

    rows = [{"text": "def f():\n    return 1\n", "id": "a", "repo_name": "r", "path": "a.py"},
            {"text": None, "id": "b", "repo_name": "r", "path": "b.py"}]
    shard = write_docs(tmp_path / "prep", rows)
    with pytest.raises(DataError, match=f"{shard}: 1 row\\(s\\) have no 'text'"):
        read_documents(tmp_path / "prep")  # what tokenize reads
    monkeypatch.chdir(tmp_path)
    for argv in (["tokenizer", "default", "data_dir=prep", "out_dir=tok", "vocab_size=300"],
                 ["sft-data", "default", "data_dir=prep", "out_dir=sft"]):
        capfd.readouterr()
        assert main(argv) == 2, argv
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "00000.parquet" in lines[0] and "'text'" in lines[0], lines


def make_shards(folder: Path, vocab: int = 1000) -> dict:
    from codegpt.tokenizer.shards import ShardWriter, write_meta

    w = ShardWriter(folder, "train", vocab, eot_id=vocab - 1, tokens_per_shard=100)
    for start in range(0, 300, 30):
        w.add(np.arange(start, start + 29) % (vocab - 1))
    return write_meta(folder, vocab, vocab - 1, "test", "h", {"train": w.finish()}, 100)


def test_token_ids_outside_the_vocabulary_are_refused_when_read(tmp_path):
    from codegpt.tokenizer.shards import SequenceIndex
    from codegpt.train.batches import TokenWindows

    make_shards(tmp_path)
    shard = tmp_path / "train" / "shard_000001.bin"
    data = np.fromfile(shard, dtype=np.uint16)
    data[5] = 1000  # = vocab_size
    data.tofile(shard)
    index = SequenceIndex.open(tmp_path, "train", seq_len=8)  # opening does not scan the shards
    windows = TokenWindows(index)
    windows.batch([0, 1, 2])  # the first shard's windows are fine
    bad = int(index.starts[1])  # the second shard's first window
    with pytest.raises(ShardError, match=f"{shard} holds the id 1000 .*vocab_size=1000"):
        windows.batch([0, bad])


@pytest.mark.parametrize("change, words", [
    ({"eot_id": 1000}, "eot_id must be in [0, vocab_size=1000), got 1000"),
    ({"eot_id": -1}, "eot_id must be in [0, vocab_size=1000), got -1"),
    ({"eot_id": "0"}, "eot_id must be in"),
    ({"dtype": "uint8"}, "dtype 'uint8' cannot hold the token ids of vocab_size=1000"),
    ({"dtype": "float32"}, "dtype 'float32' cannot hold"),
    ({"dtype": "bogus"}, "dtype 'bogus' cannot hold"),
    ({"vocab_size": 70000, "eot_id": 5}, "dtype 'uint16' cannot hold"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
])
def test_a_meta_json_that_cannot_describe_its_shards_is_refused(tmp_path, change, words):
    from codegpt.tokenizer.shards import read_meta

    meta = make_shards(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ShardError) as e:
        read_meta(tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_non_finite_float_is_refused_even_without_a_declared_range():
    @dataclasses.dataclass
    class Plain:
        x: float = 1.0

    @dataclasses.dataclass
    class Unbounded:
        x: float = setting(1.0, gt=0, finite=False)

    with pytest.raises(ConfigError, match="x must be a finite number, got nan"):
        from_dict(Plain, {"x": "nan"})
    assert math.isinf(from_dict(Unbounded, {"x": "inf"}).x)
    with pytest.raises(ConfigError, match="x must be > 0, got nan"):
        from_dict(Unbounded, {"x": "nan"})
