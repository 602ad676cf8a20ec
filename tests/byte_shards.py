"""Byte-level token shards of the standard library: training data for tests without a tokenizer.

Each byte is a token (256 ids + ``<|endoftext|>``), written with the library's ShardWriter and
meta.json, so training reads them like any token shards.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from codegpt.documents import repository_bytes, split_repositories
from codegpt.tokenizer.shards import SPLITS, ShardWriter, write_meta

BYTE_VOCAB = 257  # 256 byte values + <|endoftext|>
BYTE_EOT = 256


def stdlib_python_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def stdlib_documents() -> Iterator[tuple[str, bytes]]:
    """(repository, bytes) of standard-library files; the repository is the top-level package."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_python_files():
        rel = path.relative_to(root)
        yield (rel.parts[0] if len(rel.parts) > 1 else rel.stem), path.read_bytes()


def write_byte_shards(out_dir: str | Path, documents: Iterable[tuple[str, bytes]],
                      max_mb: float = 8.0, val_fraction: float = 0.05, seed: int = 0,
                      tokens_per_shard: int = 1_000_000) -> dict:
    """Shards of up to ``max_mb`` of (repository, bytes) documents in a seeded order, split by
    repository with the library's split."""
    docs = sorted(d for d in documents if d[1])
    random.Random(seed).shuffle(docs)
    budget, used, chosen = int(max_mb * 1e6), 0, []
    for doc in docs:
        if used >= budget:
            break
        chosen.append(doc)
        used += len(doc[1])
    val = split_repositories(repository_bytes((r, len(d)) for r, d in chosen), val_fraction, seed)
    writers = {s: ShardWriter(out_dir, s, BYTE_VOCAB, BYTE_EOT, tokens_per_shard) for s in SPLITS}
    for repo, data in chosen:
        writers["val" if repo in val else "train"].add(np.frombuffer(data, dtype=np.uint8))
    splits = {s: w.finish() for s, w in writers.items()}
    return write_meta(out_dir, BYTE_VOCAB, BYTE_EOT, "bytes", "bytes-v1", splits, tokens_per_shard)
