
import numpy as np
import pytest

from codegpt.tokenizer.shards import SequenceIndex, ShardError, ShardWriter, read_meta, write_meta


def shard_documents(token_dir, split: str) -> list[np.ndarray]:
    """Each document's ids (without eot) of a split, in shard order, read through the memmaps
    training opens (``SequenceIndex.open`` checks meta.json and every shard's size)."""
    index = SequenceIndex.open(token_dir, split, seq_len=1)
    tokens = np.concatenate([np.asarray(a, dtype=np.int64) for a in index.arrays])
    ends = np.flatnonzero(tokens == read_meta(token_dir)["eot_id"])
    return [tokens[a + 1:b] for a, b in zip(np.concatenate([[-1], ends[:-1]]), ends)]


def make_shards(tmp_path, docs, vocab=1000, tokens_per_shard=50):
    w = ShardWriter(tmp_path, "train", vocab, eot_id=vocab - 1, tokens_per_shard=tokens_per_shard)
    for d in docs:
        w.add(d)
    splits = {"train": w.finish()}
    return write_meta(tmp_path, vocab, vocab - 1, "test", "h", splits, tokens_per_shard)


def test_documents_round_trip_with_eot_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 998, size=n) for n in (5, 70, 1, 33, 120)]
    meta = make_shards(tmp_path, docs)
    assert meta["dtype"] == "uint16"
    assert len(meta["splits"]["train"]["shards"]) == 5  # 234 tokens / 50 per shard
    assert meta["splits"]["train"]["tokens"] == sum(len(d) + 1 for d in docs)
    back = shard_documents(tmp_path, "train")
    assert [d.tolist() for d in back] == [d.tolist() for d in docs]


def test_large_vocab_uses_uint32(tmp_path):
    assert make_shards(tmp_path, [[70000, 1]], vocab=70001)["dtype"] == "uint32"


def test_out_of_range_token_is_refused(tmp_path):
    w = ShardWriter(tmp_path, "train", 10, eot_id=9)
    with pytest.raises(ShardError, match="out of range"):
        w.add([3, 10])


def test_windows_are_contiguous_slices_with_shifted_targets(tmp_path):
    make_shards(tmp_path, [np.arange(0, 990)], tokens_per_shard=10_000)
    idx = SequenceIndex.open(tmp_path, "train", seq_len=16)
    assert len(idx) == (991 - 1) // 16
    w = idx.get(3)
    assert w.tolist() == list(range(48, 65))


def test_missing_and_truncated_shards_are_clear_errors(tmp_path):
    make_shards(tmp_path, [np.arange(0, 200)])
    shard = tmp_path / "train" / "shard_000001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])
    with pytest.raises(ShardError, match="truncated"):
        SequenceIndex.open(tmp_path, "train", 8)
    shard.unlink()
    with pytest.raises(ShardError, match="missing token shard"):
        SequenceIndex.open(tmp_path, "train", 8)
    with pytest.raises(ShardError, match="no 'val' split"):
        SequenceIndex.open(tmp_path, "val", 8)


def test_not_a_token_folder_and_too_little_data(tmp_path):
    with pytest.raises(ShardError, match="no meta.json"):
        read_meta(tmp_path)
    make_shards(tmp_path, [[1, 2, 3]])
    with pytest.raises(ShardError, match="fewer than"):
        SequenceIndex.open(tmp_path, "train", 64)
    (tmp_path / "meta.json").write_text("{bad")
    with pytest.raises(ShardError, match="not valid JSON"):
        read_meta(tmp_path)
