"""Data prep's documents: the one contract between data prep and the stages that read it.

Data prep (``codegpt prep``) writes the documents it keeps as parquet shards,
``OUT/data/NNNNN.parquet``, with the columns of ``SCHEMA``. Tokenizer training and token shards
read them only through this module, so the schema, the "no shards" check and the train/val
split are written once.

The split is by repository (no repository has files in both splits) and balanced by bytes:
``split_repositories`` picks whole repositories for val until val holds ``val_fraction`` of
the bytes, as closely as the repository sizes allow (with many small repositories, within a
fraction of a percent; the demo's 5% comes out at 5% ± 0.5%).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from codegpt.errors import DataError
from codegpt.outputs import STAGES, read_marker, require_complete

SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("source", pa.string()),
    ("repo_name", pa.string()), ("path", pa.string()), ("license", pa.string()),
    ("size", pa.int64()), ("sha256", pa.string()), ("stars", pa.int64()),
    ("commit", pa.string()),
])
META_FIELDS = [f.name for f in SCHEMA if f.name not in ("text", "id")]
NOT_NULL = ("text", "id", "repo_name")  # every document has them (the others may be null)


def parquet_files(data_dir: str | Path) -> list[Path]:
    """The parquet shards of a data-prep output: ``data_dir`` is the folder ``codegpt prep``
    wrote (its ``data/`` subfolder is used) or the folder of shards itself."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"data_dir {data_dir} is not a folder: run `codegpt prep` (`make data`) "
                        "first, or point data_dir at its output")
    if not any(folder.glob("*.parquet")) and (folder / "data").is_dir():
        folder = folder / "data"
    check_prep_complete(folder)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"no parquet shards in {folder}: run `codegpt prep` (`make data`) first, "
                        "or point data_dir at its output")
    return files


def check_prep_complete(shards: Path) -> None:
    """Refuse the shards of a data prep that did not finish (killed, failed, or altered since):
    a partial dataset must never reach the tokenizer or the token shards. The output folder is
    the shards' parent when that is where ``codegpt prep`` wrote them; a folder of parquet
    shards made some other way (no marker, no prep files beside it) is read as it is."""
    root = shards.parent if shards.name == "data" else shards
    if read_marker(root) is not None or STAGES["prep"].legacy(root):
        require_complete(root, "prep", legacy_file="stats.json")


def read_table(path: Path, columns: Iterable[str]) -> pa.Table:
    """One shard's ``columns``; a shard that lacks one, is not parquet, or holds a null in one
    of the ``NOT_NULL`` columns is a DataError."""
    columns = list(columns)
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}: not a data-prep shard "
                            f"(expected {SCHEMA.names})")
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} cannot be read as parquet ({e})") from e
    for c in columns:
        nulls = table.column(c).null_count
        if c in NOT_NULL and nulls:
            raise DataError(f"{path}: {nulls} row(s) have no '{c}' (null): not a data-prep "
                            "shard; rewrite it with `codegpt prep`")
    return table


def iter_tables(data_dir: str | Path, columns: Iterable[str]) -> Iterator[pa.Table]:
    """Each shard's ``columns``, shard by shard (so only one shard is in memory at a time)."""
    for path in parquet_files(data_dir):
        yield read_table(path, columns)


def read_documents(data_dir: str | Path, columns: Iterable[str] = ("id", "repo_name", "text")
                   ) -> list[tuple]:
    """Every document as a tuple of ``columns`` (the first must be ``id``), ordered by id, so
    the order does not depend on how data prep sharded its output."""
    columns = list(columns)
    docs: list[tuple] = []
    for table in iter_tables(data_dir, columns):
        docs.extend(zip(*(table.column(c).to_pylist() for c in columns)))
    if not docs:
        raise DataError(f"the parquet shards in {data_dir} hold no documents")
    docs.sort(key=lambda d: d[0])
    return docs


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def repository_bytes(docs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Bytes per repository from (repo_name, bytes) pairs."""
    sizes: dict[str, int] = {}
    for repo, n in docs:
        sizes[repo] = sizes.get(repo, 0) + n
    return sizes


def split_repositories(repo_bytes: Mapping[str, int], val_fraction: float, seed: int = 0
                       ) -> frozenset[str]:
    """The repositories that go to val; every other one goes to train. The one function that
    decides the split, for every stage.

    Repositories are visited in a seeded pseudo-random order (a hash of seed and name, so the
    choice does not depend on the order they are given in) and each one joins val when that
    brings val's share of the bytes closer to ``val_fraction``. A repository is never cut, so
    the share lands within half the size of the smallest repository that could still fit; if
    no repository fits at all, the one closest to the target goes to val, so val is never empty
    when ``val_fraction`` > 0 and there are two repositories or more."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    total = sum(repo_bytes.values())
    if val_fraction == 0 or total == 0 or len(repo_bytes) < 2:
        return frozenset()
    target = val_fraction * total
    order = sorted(repo_bytes, key=lambda r: (_repo_hash(r, seed), r))
    val, used = set(), 0
    for repo in order:
        size = repo_bytes[repo]
        if abs(used + size - target) < abs(used - target) and len(val) + 1 < len(repo_bytes):
            val.add(repo)
            used += size
    if not val:
        val.add(min(order, key=lambda r: abs(repo_bytes[r] - target)))
    return frozenset(val)


def _repo_hash(repo: str, seed: int) -> int:
    data = f"{seed}\0{repo}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
