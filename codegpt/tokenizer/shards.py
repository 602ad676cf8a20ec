"""Token shards: flat binary files of token ids plus ``meta.json``, written by ``codegpt
tokenize`` (``codegpt.tokenizer.encode``) and memory-mapped by training.

Layout of a token folder::

    meta.json                format, dtype, vocab_size, eot_id, the tokenizer's path and hash,
                             tokens_per_shard, and per split its shards (file, tokens),
                             token and document counts
    train/shard_000000.bin   raw token ids in ``dtype`` (uint16 when the vocabulary fits, else
                             uint32) in the machine's byte order (little-endian on x86 and
                             ARM), no header: each document's ids followed by
                             ``<|endoftext|>`` (``eot_id``); a document may run on into the
                             next shard
    val/shard_000000.bin

A shard's size is exactly its ``tokens`` times the dtype's size; readers refuse a shard that
differs (truncated or rewritten) and ids at or above ``vocab_size``. Training memory-maps the
shards (``SequenceIndex``); nothing is loaded whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from codegpt.errors import ShardError
from codegpt.io import atomic_write_json, fsync_dir
from codegpt.outputs import require_complete

FORMAT = "codegpt-tokens-v1"
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends documents (each followed by eot) to fixed-size shards of one split."""

    def __init__(self, out_dir: str | Path, split: str, vocab_size: int, eot_id: int,
                 tokens_per_shard: int = 100_000_000):
        self.dir = Path(out_dir) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.dtype = dtype_for_vocab(vocab_size)
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.tokens_per_shard = tokens_per_shard
        self.shards: list[dict] = []
        self.documents = 0
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: Iterable[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ShardError(f"token id out of range [0, {self.vocab_size}) in document {self.documents}")
        arr = np.append(arr, self.eot_id).astype(self.dtype)
        self.documents += 1
        while arr.size:
            room = self.tokens_per_shard - self._buffered
            self._buf.append(arr[:room])
            self._buffered += min(room, arr.size)
            arr = arr[room:]
            if self._buffered >= self.tokens_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        name = f"shard_{len(self.shards):06d}.bin"
        tmp = self.dir / f".{name}.tmp"
        data = np.concatenate(self._buf)
        with open(tmp, "wb") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        self.shards.append({"file": f"{self.split}/{name}", "tokens": int(data.size)})
        self._buf, self._buffered = [], 0

    def finish(self) -> dict:
        self._flush()
        fsync_dir(self.dir)
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards),
                "documents": self.documents}


def write_meta(out_dir: str | Path, vocab_size: int, eot_id: int, tokenizer: str,
               tokenizer_hash: str, splits: dict, tokens_per_shard: int) -> dict:
    meta = {
        "format": FORMAT,
        "dtype": dtype_for_vocab(vocab_size).name,
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "tokenizer": tokenizer,
        "tokenizer_hash": tokenizer_hash,
        "tokens_per_shard": tokens_per_shard,
        "splits": splits,
    }
    atomic_write_json(Path(out_dir) / "meta.json", meta)
    return meta


def read_meta(token_dir: str | Path) -> dict:
    path = Path(token_dir) / "meta.json"
    if not path.is_file():
        raise ShardError(f"no meta.json in {token_dir}: not a token-shard folder "
                         "(make one with `codegpt tokenize` / `make tokens`)")
    require_complete(token_dir, "tokenize", legacy_file="meta.json")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path} is not valid JSON: {e}") from e
    for key in ("dtype", "vocab_size", "eot_id", "splits"):
        if key not in meta:
            raise ShardError(f"{path} lacks the field '{key}'")
    check_meta(meta, path)
    return meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_meta(meta: dict, path: Path) -> None:
    """Refuse a meta.json whose vocab_size, eot_id or dtype cannot describe its shards: an
    eot_id outside [0, vocab_size), or a dtype that is not an unsigned integer type able to
    hold every id below vocab_size."""
    vocab, eot = meta["vocab_size"], meta["eot_id"]
    if not _is_int(vocab) or vocab < 1:
        raise ShardError(f"{path}: vocab_size must be a positive integer, got {vocab!r}")
    if not _is_int(eot) or not 0 <= eot < vocab:
        raise ShardError(f"{path}: eot_id must be in [0, vocab_size={vocab}), got {eot!r}")
    try:
        dtype = np.dtype(meta["dtype"])
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind != "u" or np.iinfo(dtype).max < vocab - 1:
        raise ShardError(f"{path}: dtype {meta['dtype']!r} cannot hold the token ids of "
                         f"vocab_size={vocab} (expected {dtype_for_vocab(vocab).name})")


@dataclass
class SequenceIndex:
    """Fixed-length training windows over the memory-mapped shards of one split.

    Window i covers ``seq_len + 1`` tokens (inputs and shifted targets); windows never cross a
    shard boundary, so each is one contiguous slice of one memmap.
    """

    arrays: list[np.memmap]
    starts: np.ndarray  # cumulative window counts per shard
    seq_len: int
    vocab_size: int | None = None  # ids at or above it are refused as each window is read

    @classmethod
    def open(cls, token_dir: str | Path, split: str, seq_len: int) -> "SequenceIndex":
        meta = read_meta(token_dir)
        if split not in meta["splits"]:
            raise ShardError(f"{token_dir}/meta.json has no '{split}' split")
        dtype = np.dtype(meta["dtype"])
        arrays, counts = [], []
        for shard in meta["splits"][split]["shards"]:
            path = Path(token_dir) / shard["file"]
            if not path.is_file():
                raise ShardError(f"missing token shard {path} (listed in meta.json)")
            expected = shard["tokens"] * dtype.itemsize
            if path.stat().st_size != expected:
                raise ShardError(f"token shard {path} has {path.stat().st_size} bytes, meta.json "
                                 f"says {expected}: truncated or rewritten")
            arr = np.memmap(path, dtype=dtype, mode="r")
            arrays.append(arr)
            counts.append(max(0, (arr.size - 1) // seq_len))
        if sum(counts) == 0:
            raise ShardError(f"split '{split}' of {token_dir} has fewer than {seq_len + 1} tokens: "
                             "nothing to train on")
        return cls(arrays, np.cumsum([0] + counts), seq_len, int(meta["vocab_size"]))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def get(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        off = (i - int(self.starts[shard])) * self.seq_len
        window = np.asarray(self.arrays[shard][off: off + self.seq_len + 1], dtype=np.int64)
        if self.vocab_size is not None and window.size and window.max() >= self.vocab_size:
            bad = int(window.max())
            raise ShardError(f"token shard {getattr(self.arrays[shard], 'filename', shard)} holds "
                             f"the id {bad} (at token {off + int(window.argmax())}), outside "
                             f"meta.json's vocab_size={self.vocab_size}: the shards do not match "
                             "their meta.json; make them again with `codegpt tokenize`")
        return window

    def batch(self, indices: Iterable[int]) -> np.ndarray:
        return np.stack([self.get(int(i)) for i in indices])

