"""The contract between data prep and tokenization: reading the shards and the train/val split."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.documents import (SCHEMA, parquet_files, read_documents, repository_bytes,
                               split_repositories, utf8_size)
from codegpt.errors import DataError


def test_val_is_whole_repositories_holding_the_asked_share_of_bytes():
    rng = random.Random(0)
    sizes = {f"org{i}/repo{i}": rng.randint(1_000, 200_000) for i in range(400)}
    total = sum(sizes.values())
    for fraction in (0.01, 0.05, 0.2, 0.5):
        val = split_repositories(sizes, fraction, seed=3)
        share = sum(sizes[r] for r in val) / total
        assert abs(share - fraction) < 0.005, (fraction, share)
        assert val < set(sizes)  # whole repositories, and some stay in train


def test_the_split_is_deterministic_and_does_not_depend_on_input_order():
    sizes = {f"r{i}": (i * 7919) % 5000 + 10 for i in range(200)}
    shuffled = dict(random.Random(1).sample(list(sizes.items()), len(sizes)))
    assert split_repositories(sizes, 0.1) == split_repositories(shuffled, 0.1)
    assert split_repositories(sizes, 0.1, seed=1) != split_repositories(sizes, 0.1, seed=2)


def test_a_huge_repository_is_not_forced_into_val():
    sizes = {"huge/one": 10_000_000, **{f"small/{i}": 10_000 for i in range(100)}}
    val = split_repositories(sizes, 0.05)
    assert "huge/one" not in val
    share = sum(sizes[r] for r in val) / sum(sizes.values())
    assert abs(share - 0.05) < 0.002


def test_edge_cases():
    assert split_repositories({"a": 10, "b": 10}, 0.0) == frozenset()
    assert split_repositories({"only": 10}, 0.5) == frozenset()  # train keeps the one repository
    assert len(split_repositories({"a": 100, "b": 100}, 0.01)) == 1  # val never empty
    assert split_repositories({"a": 0, "b": 0}, 0.5) == frozenset()
    with pytest.raises(ValueError, match="val_fraction"):
        split_repositories({"a": 1}, 1.0)


def test_repository_bytes_adds_up_per_repository():
    assert repository_bytes([("a", 3), ("b", 1), ("a", 2)]) == {"a": 5, "b": 1}
    assert utf8_size("é😀") == 6


def test_readers_accept_the_prep_folder_or_its_data_folder(tmp_path):
    data = tmp_path / "prep" / "data"
    data.mkdir(parents=True)
    rows = [{"text": f"x = {i}\n", "id": f"{9 - i}", "repo_name": f"r{i % 3}"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), data / "00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:]), data / "00000.parquet")
    assert parquet_files(tmp_path / "prep") == parquet_files(data)
    docs = read_documents(tmp_path / "prep")
    assert [d[0] for d in docs] == sorted(r["id"] for r in rows)  # ordered by id
    assert {d[2] for d in docs} == {r["text"] for r in rows}


def test_bad_data_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        parquet_files(tmp_path / "missing")
    with pytest.raises(DataError, match="no parquet shards"):
        parquet_files(tmp_path)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "00000.parquet")
    with pytest.raises(DataError, match="lacks the column"):
        read_documents(tmp_path)
    (tmp_path / "00000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        read_documents(tmp_path)


def test_the_schema_is_the_one_data_prep_writes():
    from data_prep import pipeline

    assert pipeline.SCHEMA is SCHEMA


@pytest.mark.slow
def test_the_demo_split_puts_five_percent_of_the_tokens_in_val(tmp_path):
    """The demo's token shards: 8 MB of the local source (the interpreter's own files, named
    by the local source's repositories), val_fraction=0.05, a BPE trained on them."""
    from codegpt.tokenizer.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
    from codegpt.tokenizer.encode import TokenizeConfig, tokenize
    from test_shards import shard_documents
    from data_prep.sources.local import LocalSource

    source = LocalSource()
    paths = source.list_paths()
    random.Random(0).shuffle(paths)
    rows, used, seen = [], 0, set()
    for label, root, path in paths:
        raw = source.read(label, root, path)
        if raw.data is None or raw.error or len(raw.data) > 200_000 or raw.data in seen:
            continue  # distinct texts only, so that a text names its repository below
        seen.add(raw.data)
        try:
            text = raw.data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rows.append({"text": text, "id": f"{len(rows):06d}", "repo_name": raw.repo_name})
        used += len(raw.data)
        if used > 10e6:
            break
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), data / "00000.parquet")
    tok_dir = train_tokenizer(TokenizerConfig(data_dir=str(data), out_dir=str(tmp_path / "tok"),
                                              vocab_size=2048, sample_mb=2)).parent
    meta = tokenize(TokenizeConfig(data_dir=str(data), tokenizer=str(tok_dir),
                                   out_dir=str(tmp_path / "tokens"), max_mb=8, val_fraction=0.05))
    tokens = {s: meta["splits"][s]["tokens"] for s in ("train", "val")}
    share = tokens["val"] / (tokens["train"] + tokens["val"])
    assert 0.03 <= share <= 0.07, share
    repo_of = {r["text"]: r["repo_name"] for r in rows}
    tok = load_tokenizer(tok_dir)
    repos = {s: {repo_of[tok.decode(ids.tolist(), skip_special_tokens=False)]
                 for ids in shard_documents(tmp_path / "tokens", s)} for s in ("train", "val")}
    assert repos["val"] and not repos["train"] & repos["val"]
