"""Tokenizer: lossless round trips, whitespace tokens, saving/loading, config and errors.

Every test trains a tiny vocabulary on an in-test corpus (a module-scoped fixture), so the
whole file runs in seconds without the network.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from byte_shards import stdlib_python_files
from codegpt.cli import main
from codegpt.config import REPO_ROOT as REPO, ConfigError, load_config
from codegpt.errors import DataError
from codegpt.tokenizer.bpe import (CODE_PATTERN, EOT, META_FILE, SPECIAL_TOKENS, TokenizerConfig,
                                   TokenizerError, build_tokenizer, bytes_per_token,
                                   load_tokenizer, sample_documents, save_tokenizer,
                                   tokenizer_file, tokenizer_hash, train_bpe, train_tokenizer,
                                   whitespace_splitter, whitespace_tokens)

AWKWARD = [
    "",
    " ",
    "\n",
    "\r",
    "a\rb\r",
    "x = 1\r\ny = 2\r\n",
    "\tif x:\n\t\treturn x\t# tab comment\n",
    "trailing   \nspaces \t \n",
    "form\x0cfeed\x0b\x1b[31mansi\x07\x7f",
    "def größe(ñ, 变量):\n    return 'naïve café' + \"日本語\"\n",
    "emoji = '😀🐍👩‍💻'  # ZWJ sequence\n",
    "\u00a0nbsp\u2028line\u2029para\u3000ideo",
    "combining: e\u0301 a\u0308\n",
    "    " * 20 + "deep\n" + " " * 50 + "x\n" + "\t" * 12 + "y\n",
    "\n" * 7 + "    \n\n        \n",
    "Ġ Ċ ĉ č — mapped byte-level symbols typed literally",
    "s = '<|fim_prefix|>' + '<|endoftext|>'\n",
    "\u200bzero\u200dwidth\ufeffbom",
    "x" * 5000,
    "max_len_2 = __init__(self, _private1, CONST_99)\n",
    "1_000_000 + 0x1F + 3.14e-10 + 10**-3\n",
]

CORPUS_FILES = 120  # stdlib files for the tiny training corpus


def stdlib_texts(n: int, skip: int = 0) -> list[str]:
    out = []
    for p in stdlib_python_files()[skip:]:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if len(out) >= n:
            break
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return stdlib_texts(CORPUS_FILES) + AWKWARD


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> TokenizerConfig:
    return TokenizerConfig(vocab_size=800, space_runs=[2, 32], tab_runs=[1, 8], newline_indent=4,
                           out_dir=str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def tok(corpus, tiny_cfg) -> Tokenizer:
    return train_bpe(corpus, tiny_cfg)


@pytest.fixture(scope="module")
def saved(tok, tiny_cfg):
    return save_tokenizer(tok, tiny_cfg.out_dir, tiny_cfg)


def roundtrip(tok: Tokenizer, text: str) -> str:
    return tok.decode(tok.encode(text).ids, skip_special_tokens=False)


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_strings_round_trip(tok, text):
    assert roundtrip(tok, text) == text


def test_real_stdlib_files_round_trip(tok):
    for text in stdlib_texts(8, skip=200):
        assert roundtrip(tok, text) == text


def test_all_control_characters_round_trip(tok):
    text = "".join(chr(c) for c in range(1, 32)) + "\x7f" + "".join(chr(c) for c in range(0x80, 0x100))
    assert roundtrip(tok, text) == text


def test_vocab_size_exact_and_special_ids_first(tok, tiny_cfg):
    assert tok.get_vocab_size() == tiny_cfg.vocab_size
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.encode("a" + EOT + "b").ids.count(0) == 1


def test_whitespace_runs_are_single_tokens(tok, tiny_cfg):
    ws = whitespace_tokens(tiny_cfg)
    assert " " * 2 in ws and " " * 32 in ws and "\t" in ws and "\t" * 8 in ws
    assert "\n" + " " * 16 in ws and "\n" + " " * 20 not in ws
    for run in (" " * 7, " " * 32, "\t" * 3):
        ids = tok.encode("x" + run + "y").ids
        assert tok.id_to_token(ids[1]) == run and len(ids) == 3
    # a newline plus indentation is one token; deeper indentation adds one more
    ids = tok.encode("x\n        return").ids
    assert tok.id_to_token(ids[1]) == "\n        "
    assert len(tok.encode(" " * 40).ids) == 2  # 32 + 8


def test_code_split_keeps_identifiers_and_indentation():
    pre = build_tokenizer(CODE_PATTERN).pre_tokenizer
    pieces = [p for p, _ in pre.pre_tokenize_str("max_len_2 = x1\n    return foo_bar")]
    assert "max_len_2" in pieces and "Ġfoo_bar" in pieces
    assert "Ġx1ĊĠĠĠĠ" in pieces  # a line's last word takes the newline and next indentation
    pieces = [p for p, _ in pre.pre_tokenize_str("self.items.append(x_2):\n\n        pass")]
    assert pieces == ["self", ".items", ".append", "(x_2", "):ĊĊĠĠĠĠĠĠĠĠ", "pass"]
    pieces = [p for p, _ in pre.pre_tokenize_str("\n    a")]
    assert pieces == ["ĊĠĠĠĠ", "a"]  # a newline that starts a text still joins its indentation


def test_training_splitter_matches_added_token_boundaries(tok, tiny_cfg):
    """Training feeds BPE the pieces between whitespace tokens; encoding must agree."""
    split = whitespace_splitter(whitespace_tokens(tiny_cfg))
    text = "a\n            b  c\t\t\td\n      e"
    assert split.findall(text) == ["\n            ", "  ", "\t\t\t", "\n    ", "  "]
    tokens = [tok.id_to_token(i) for i in tok.encode(text).ids]
    for run in split.findall(text):
        assert run in tokens


def test_hf_and_tokenizers_give_identical_ids(saved, corpus):
    """tokenizer.json loaded as transformers' PreTrainedTokenizerFast, with special-token text
    split as text (what ``load_tokenizer`` does), gives the same ids and decodes losslessly."""
    from transformers import PreTrainedTokenizerFast  # heavy, a dev dependency: imported on use

    raw = load_tokenizer(saved)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(saved), eos_token=EOT, bos_token=EOT,
                                 unk_token=EOT, pad_token=EOT, clean_up_tokenization_spaces=False,
                                 split_special_tokens=True)
    assert hf.eos_token == EOT and hf.eos_token_id == 0 and hf.bos_token == EOT
    for text in corpus[:5] + AWKWARD:
        ids = raw.encode(text).ids
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert hf.decode(ids) == text


def test_auto_tokenizer_loads_the_folder(saved):
    from transformers import AutoTokenizer  # heavy, a dev dependency: imported on use

    hf = AutoTokenizer.from_pretrained(str(saved.parent))
    assert hf.eos_token == EOT and hf.eos_token_id == 0
    text = "def f(x):\n\treturn x  # ok\r\n"
    assert hf(text)["input_ids"] == load_tokenizer(saved).encode(text).ids
    assert hf.decode(hf(text)["input_ids"]) == text


def test_meta_records_hash_and_ids(saved, tiny_cfg):
    meta = json.loads((saved.parent / META_FILE).read_text())
    assert meta["tokenizer_hash"] == tokenizer_hash(saved) == tokenizer_hash(saved.parent)
    assert len(meta["tokenizer_hash"]) == 64
    assert meta["vocab_size"] == tiny_cfg.vocab_size and meta["eot_id"] == 0
    assert meta["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert not list(saved.parent.glob(".*tmp*"))  # atomic writes left no temp files


def test_tokenizer_file_takes_the_file_or_its_folder(saved, tmp_path):
    assert tokenizer_file(saved) == tokenizer_file(saved.parent) == saved
    with pytest.raises(TokenizerError, match="no tokenizer at"):
        tokenizer_file(tmp_path / "absent.json")


def test_bytes_per_token(tok):
    assert bytes_per_token(lambda s: s.encode(), ["abc", "de"]) == 1.0
    assert bytes_per_token(lambda s: tok.encode(s).ids, stdlib_texts(3, skip=300)) > 1.2


def write_parquet(folder, docs: list[tuple[str, str]]):
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": [t for _, t in docs], "id": [str(i) for i in range(len(docs))],
                      "repo_name": [r for r, _ in docs]})
    pq.write_table(table, folder / "00000.parquet")


def test_train_tokenizer_end_to_end_from_parquet(tmp_path, corpus):
    docs = [(f"repo{i % 5}", t) for i, t in enumerate(corpus[:60])]
    write_parquet(tmp_path / "data", docs)
    cfg = load_config(TokenizerConfig, None, [f"data_dir={tmp_path / 'data'}",
                                       f"out_dir={tmp_path / 'out'}", "vocab_size=700",
                                       "sample_mb=0.5", "holdout_repos=[repo0]"])
    path = train_tokenizer(cfg)
    assert path.name == "tokenizer.json" and Tokenizer.from_file(str(path)).get_vocab_size() == 700
    meta = json.loads((path.parent / META_FILE).read_text())
    assert 0 < meta["sample"]["mb"] <= 0.5 + max(len(t.encode()) for _, t in docs) / 1e6
    assert (path.parent / "config.yaml").is_file()


def test_sample_is_seeded_and_respects_limits(tmp_path):
    docs = [(f"r{i % 3}", f"x = {i}\n" * 50) for i in range(200)]
    write_parquet(tmp_path, docs)
    a = sample_documents(tmp_path, 0.01, seed=1)
    assert a == sample_documents(tmp_path, 0.01, seed=1)
    assert a != sample_documents(tmp_path, 0.01, seed=2)
    assert len(sample_documents(tmp_path, 10, max_documents=7)) == 7
    held = sample_documents(tmp_path, 10, exclude_repos=["r0"])
    assert len(held) == 200 - 67


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        sample_documents(tmp_path, 1.0)
    write_parquet(tmp_path / "d", [("r", "")])
    with pytest.raises(TokenizerError, match="no documents"):
        sample_documents(tmp_path / "d", 1.0)


def test_cli_reports_missing_data(tmp_path, capsys):
    config = tmp_path / "t.yaml"
    config.write_text("vocab_size: 1000\n")
    assert main(["tokenizer", str(config), f"data_dir={tmp_path}"]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ConfigError, match="vocab_size"):
        load_config(TokenizerConfig, None, ["vocab_sise=10"])
    with pytest.raises(ConfigError, match="pre_tokenizer"):
        load_config(TokenizerConfig, None, ["pre_tokenizer=bert"])
    with pytest.raises(ConfigError, match="space_runs"):
        load_config(TokenizerConfig, None, ["space_runs=[3,2]"])
    with pytest.raises(ConfigError, match="no room"):
        load_config(TokenizerConfig, None, ["vocab_size=261"])
    with pytest.raises(ConfigError, match="no room"):
        load_config(TokenizerConfig, None, ["vocab_size=300", "space_runs=[2,32]", "tab_runs=[1,8]"])
    cfg = load_config(TokenizerConfig, REPO / "configs" / "tokenizer" / "default.yaml")
    assert cfg.vocab_size == 49152 and whitespace_tokens(cfg) == []
    cfg = load_config(TokenizerConfig, REPO / "configs" / "tokenizer" / "default.yaml", ["tab_runs=[1,8]"])
    assert whitespace_tokens(cfg) == ["\t" * n for n in range(1, 9)]
