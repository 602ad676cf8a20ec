"""Token shards from data prep's parquet documents and a trained tokenizer."""

import colorsys
import inspect
import json
import json.decoder
import json.encoder
import string
import textwrap
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.cli import main
from codegpt.documents import repository_bytes, split_repositories, utf8_size
from codegpt.errors import DataError
from codegpt.tokenizer.bpe import EOT, TokenizerConfig, fast_encoder, load_tokenizer, train_tokenizer
from codegpt.tokenizer.encode import TokenizeConfig, check_tokenizer, tokenize
from codegpt.tokenizer.shards import SequenceIndex, ShardError
from test_shards import shard_documents
from test_tokenizer import AWKWARD


def corpus_docs() -> list[dict]:
    docs = []
    for i, mod in enumerate([colorsys, json.decoder, json.encoder, string, textwrap]):
        src = inspect.getsource(mod)
        for j in range(4):  # four repositories' worth of files
            docs.append({"id": f"{i:02d}{j}", "repo_name": f"repo{j}/{mod.__name__}",
                         "text": src if j == 0 else src + f"\n# copy {j}\n"})
    docs.append({"id": "zz", "repo_name": "repo9/odd",
                 "text": "s = '<|endoftext|>'  # a literal marker\r\n\tx = 'é😀'\n"})
    return docs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    data = root / "data"
    data.mkdir()
    docs = corpus_docs()
    pq.write_table(pa.Table.from_pylist(docs[:10]), data / "00000.parquet")
    pq.write_table(pa.Table.from_pylist(docs[10:]), data / "00001.parquet")
    tok_dir = train_tokenizer(TokenizerConfig(data_dir=str(data), out_dir=str(root / "tok"),
                                              vocab_size=700, sample_mb=5)).parent
    out = root / "tokens"
    meta = tokenize(TokenizeConfig(data_dir=str(data), tokenizer=str(tok_dir), out_dir=str(out),
                                   val_fraction=0.3, tokens_per_shard=5000))
    return docs, tok_dir, out, meta


def test_shards_decode_back_to_exactly_the_documents(setup):
    docs, tok_dir, out, meta = setup
    tok = load_tokenizer(tok_dir)
    decoded = Counter()
    for split in ("train", "val"):
        for ids in shard_documents(out, split):
            decoded[(split, tok.decode(ids.tolist(), skip_special_tokens=False))] += 1
    texts = Counter(d["text"] for d in docs)
    assert Counter(text for _, text in decoded.elements()) == texts
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 700
    assert meta["eot_id"] == tok.token_to_id(EOT)
    n_tokens = sum(meta["splits"][s]["tokens"] for s in ("train", "val"))
    eots = sum(int((np.fromfile(out / sh["file"], dtype=np.uint16) == meta["eot_id"]).sum())
               for s in ("train", "val") for sh in meta["splits"][s]["shards"])
    assert eots == len(docs)  # exactly one <|endoftext|> per document: the literal one is bytes
    assert n_tokens > 0 and len(meta["splits"]["train"]["shards"]) > 1


def test_the_split_is_the_shared_function_and_keeps_repositories_whole(setup):
    docs, tok_dir, out, meta = setup
    val = split_repositories(repository_bytes((d["repo_name"], utf8_size(d["text"])) for d in docs),
                             0.3, seed=0)
    assert val and len(val) < len({d["repo_name"] for d in docs})
    tok = load_tokenizer(tok_dir)
    by_split = {s: Counter(tok.decode(ids.tolist(), skip_special_tokens=False)
                           for ids in shard_documents(out, s)) for s in ("train", "val")}
    expected = {s: Counter(d["text"] for d in docs if (d["repo_name"] in val) == (s == "val"))
                for s in ("train", "val")}
    assert by_split == expected  # exactly the repositories the shared function puts in val


def test_training_reads_the_shards_and_checks_the_tokenizer(setup, tmp_path):
    docs, tok_dir, out, meta = setup
    index = SequenceIndex.open(out, "train", 32)
    assert len(index) > 10 and int(index.get(0).max()) < meta["vocab_size"]
    check_tokenizer(out, tok_dir)  # the same tokenizer passes
    other = train_tokenizer(TokenizerConfig(data_dir=str(tok_dir.parent / "data"),
                                            out_dir=str(tmp_path / "other"), vocab_size=650,
                                            sample_mb=5)).parent
    with pytest.raises(ShardError, match="650 ids but the shards .* vocabulary of 700"):
        check_tokenizer(out, other)


def test_same_size_but_different_tokenizer_is_refused(setup, tmp_path):
    docs, tok_dir, out, meta = setup
    changed = tmp_path / "tok"
    changed.mkdir()
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["normalizer"] = None  # any change of the file changes its hash
    spec["model"]["dropout"] = 0.0
    (changed / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ShardError, match="made with another tokenizer"):
        check_tokenizer(out, changed)


def test_empty_dataset_and_missing_folder_are_clear_errors(setup, tmp_path):
    _, tok_dir, _, _ = setup
    with pytest.raises(DataError, match="is not a folder"):
        tokenize(TokenizeConfig(data_dir=str(tmp_path / "nothing"), tokenizer=str(tok_dir),
                                out_dir=str(tmp_path / "o")))
    (tmp_path / "no_shards").mkdir()
    with pytest.raises(DataError, match="no parquet shards"):
        tokenize(TokenizeConfig(data_dir=str(tmp_path / "no_shards"), tokenizer=str(tok_dir),
                                out_dir=str(tmp_path / "o")))
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema(
        [("id", pa.string()), ("repo_name", pa.string()), ("text", pa.string())])),
        empty / "00000.parquet")
    with pytest.raises(DataError, match="hold no documents"):
        tokenize(TokenizeConfig(data_dir=str(empty), tokenizer=str(tok_dir),
                                out_dir=str(tmp_path / "o")))


def test_the_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["tokenize", "default", f"data_dir={tmp_path}", f"out_dir={tmp_path}/o"]) == 2
    assert "error:" in capsys.readouterr().err


def test_tiktoken_engine_gives_the_same_ids_as_hf(setup):
    docs, tok_dir, _, _ = setup
    fast, plain = fast_encoder(tok_dir), load_tokenizer(tok_dir)
    assert fast is not None
    texts = [d["text"] for d in docs] + AWKWARD
    for text in texts:
        ids = plain.encode(text, add_special_tokens=False).ids
        assert fast.encode_ordinary(text) == ids, text[:60]
        assert fast.decode(ids) == text
    # a literal <|endoftext|> in a document is text, not the document separator
    assert 0 not in fast.encode_ordinary("x = '<|endoftext|>'")


def test_shards_are_identical_with_either_engine(setup, tmp_path):
    docs, tok_dir, out, meta = setup
    data = out.parent / "data"
    hf_meta = tokenize(TokenizeConfig(data_dir=str(data), tokenizer=str(tok_dir), engine="hf",
                                      out_dir=str(tmp_path), val_fraction=0.3, tokens_per_shard=5000))
    assert hf_meta["splits"] == meta["splits"]
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            assert (tmp_path / shard["file"]).read_bytes() == (out / shard["file"]).read_bytes()


def test_whitespace_token_tokenizers_fall_back_to_hf(tmp_path, setup):
    docs, tok_dir, out, _ = setup
    ws = train_tokenizer(TokenizerConfig(data_dir=str(tok_dir.parent / "data"), out_dir=str(tmp_path),
                                         vocab_size=700, sample_mb=5, space_runs=[2, 8])).parent
    assert fast_encoder(ws) is None
