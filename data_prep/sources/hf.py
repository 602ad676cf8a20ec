"""A Hugging Face dataset of source files: a hub dataset, or local parquet / jsonl files.

Two layouts are recognised from their columns, so a config needs only ``path``:

* "the-stack" (bigcode/the-stack, -dedup, -smol): ``content``, ``max_stars_repo_name``,
  ``max_stars_repo_path``, ``max_stars_count``, ``max_stars_repo_licenses`` (a list),
  ``lang`` and ``ext``;
* "github-code" (codeparrot/github-code and its parquet copies): ``code``, ``repo_name``,
  ``path``, ``license``, ``language``, ``size``.

Any other layout needs ``columns:``, a mapping from our field names (``text``, ``repo_name``,
``path``, ``license``, ``stars``, ``language``, ``ext``) to the dataset's columns.

Rows of another language are skipped (they are not inputs of a Python corpus); rows outside
the license allowlist and rows without text are yielded as error records, so the pipeline's
statistics account for them. Work is split across tasks deterministically: contiguous blocks of
rows for a map-style (non-streaming) dataset, ``split_dataset_by_node`` (whole files when their
number divides the task count, else every world_size-th row) for a streaming one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import datasets
from datasets.distributed import split_dataset_by_node

from codegpt.errors import ConfigError
from data_prep.sources.base import RawFile, Source

log = logging.getLogger(__name__)

FIELDS = ("text", "repo_name", "path", "license", "stars", "language", "ext")

# Known layouts: our field -> the dataset's column. ``text`` must exist for a layout to match.
STYLES: dict[str, dict[str, str]] = {
    "the-stack": {"text": "content", "repo_name": "max_stars_repo_name",
                  "path": "max_stars_repo_path", "license": "max_stars_repo_licenses",
                  "stars": "max_stars_count", "language": "lang", "ext": "ext"},
    "github-code": {"text": "code", "repo_name": "repo_name", "path": "path",
                    "license": "license", "language": "language"},
}

# Local files by suffix -> the datasets builder that reads them.
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json",
            ".jsonl.gz": "json", ".json.gz": "json"}

BATCH_ROWS = 1000


def detect_columns(columns: list[str], mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Our field -> dataset column: a known layout (the first whose text column is present,
    keeping only its columns that exist) updated with the explicit ``mapping``.

    Raises ConfigError, listing the columns found, when no text column can be determined or a
    mapped column does not exist, because silently reading nothing would look like an empty
    dataset rather than a misconfigured one."""
    present = set(columns)
    resolved: dict[str, str] = {}
    for style in STYLES.values():
        if style["text"] in present:
            resolved = {f: c for f, c in style.items() if c in present}
            break
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise ConfigError(f"hf source: unknown field(s) {unknown} in columns:; "
                          f"valid fields are {list(FIELDS)}")
    missing = {f: c for f, c in mapping.items() if c is not None and c not in present}
    if missing:
        raise ConfigError(f"hf source: mapped column(s) {missing} not in the dataset; "
                          f"columns found: {sorted(present)}")
    for f, c in mapping.items():  # a null in the mapping switches a detected column off
        if c is None:
            resolved.pop(f, None)
        else:
            resolved[f] = c
    if "text" not in resolved:
        layouts = "; ".join(f"{k}: {s['text']}, {s['repo_name']}, {s['path']}, ..."
                            for k, s in STYLES.items())
        raise ConfigError(
            f"hf source: cannot tell which column holds the file text; columns found: "
            f"{sorted(present)}. Known layouts ({layouts}) did not match: set columns: "
            f"{{text: <column>, repo_name: ..., path: ..., license: ..., stars: ...}}")
    return resolved


def local_files(root: Path) -> tuple[str, list[str]]:
    """(builder, sorted files) for a local file or folder of parquet / json(l) files.

    One builder per source: a folder that mixes parquet and json would need two schemas."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    by_builder: dict[str, list[str]] = {}
    for p in files:
        builder = _builder_for(p.name)
        if builder:
            by_builder.setdefault(builder, []).append(str(p))
    if not by_builder:
        raise ConfigError(f"hf source: no parquet or json(l) files at {root}; expected files "
                          f"ending in {sorted(BUILDERS)}")
    if len(by_builder) > 1:
        raise ConfigError(f"hf source: {root} mixes file types {sorted(by_builder)}; point "
                          f"path at one kind, or select files with data_files:")
    (builder, found), = by_builder.items()
    return builder, found


def _builder_for(name: str) -> str | None:
    for suffix, builder in BUILDERS.items():
        if name.endswith(suffix):
            return builder
    return None


def _license(value: Any, allowed: set[str] | None) -> tuple[str | None, bool]:
    """(license to record, whether allowed). A list (the-stack's repo licenses) is allowed when
    any of its entries is — a repository listing several licenses is usually dual-licensed —
    and records the first allowed entry."""
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [str(v).strip().lower() for v in values if v is not None and str(v).strip()]
    if allowed is None:
        return (names[0] if names else None), True
    for name in names:
        if name in allowed:
            return name, True
    return (names[0] if names else None), False


def _stars(value: Any) -> int | None:
    """Star count as an int; the-stack stores it as a nullable float."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


class HFSource(Source):
    name = "hf"

    def __init__(self, path: str, data_files: str | list | dict | None = None,
                 split: str = "train", streaming: bool | None = None,
                 name: str | None = None, data_dir: str | None = None,
                 columns: dict[str, str] | None = None,
                 languages: list[str] | None = ("python",),
                 extensions: list[str] | None = ("py",),
                 licenses: list[str] | None = None, max_rows: int | None = None,
                 cache_dir: str | None = None, revision: str | None = None):
        """path: a hub dataset name, or a local parquet / json(l) file or folder of them.
        data_files / name / data_dir / revision: passed to ``datasets.load_dataset`` (for a
        local folder, data_files are patterns relative to it). streaming: default true for a hub
        name (no full download), false for local files. columns: our field -> column, on top of
        the auto-detected layout. languages / extensions: rows are kept only when their language
        (case-insensitive) / extension is listed, for each of these columns that exists; null
        keeps all. licenses: an allowlist (case-insensitive); null keeps all. max_rows: read only
        the first rows of the split (before it is split across tasks), e.g. for a smoke run."""
        if not path:
            raise ConfigError("hf source needs path: a hub dataset name or a local folder/file")
        self.path = str(path)
        self.local = os.path.exists(self.path)
        self.data_files, self.split, self.name = data_files, split, name
        self.data_dir, self.revision, self.cache_dir = data_dir, revision, cache_dir
        self.streaming = (not self.local) if streaming is None else bool(streaming)
        self.columns = dict(columns) if columns else None
        self.languages = {str(x).lower() for x in languages} if languages is not None else None
        self.extensions = ({str(x).lower().lstrip(".") for x in extensions}
                           if extensions is not None else None)
        self.licenses = {str(x).lower() for x in licenses} if licenses is not None else None
        if max_rows is not None and max_rows < 0:
            raise ConfigError(f"hf source: max_rows must be >= 0, got {max_rows}")
        self.max_rows = max_rows

    # --- loading ----------------------------------------------------------------------------

    def load(self):
        """The configured split as a ``datasets`` Dataset or IterableDataset."""
        kwargs: dict[str, Any] = {"split": self.split, "streaming": self.streaming,
                                  "cache_dir": self.cache_dir}
        if self.local:
            root = Path(self.path)
            if self.data_files is not None:
                if not root.is_dir():
                    raise ConfigError(f"hf source: data_files needs path to be a folder, "
                                      f"got file {root}")
                builder = self._builder_for_patterns(root)
                kwargs.update(data_dir=str(root), data_files=self.data_files)
            else:
                builder, files = local_files(root)
                kwargs["data_files"] = files
            args = [builder]
        else:
            args = [self.path]
            kwargs.update(name=self.name, data_dir=self.data_dir, data_files=self.data_files,
                          revision=self.revision)
        try:
            ds = datasets.load_dataset(*args, **kwargs)
        except (FileNotFoundError, ValueError) as e:
            where = "local files" if self.local else "hub dataset"
            raise ConfigError(f"hf source: cannot load {where} {self.path!r} split "
                              f"{self.split!r}: {e}. Check path, data_files and split") from e
        if self.max_rows is not None:
            ds = ds.take(self.max_rows) if self.streaming else ds.select(range(min(self.max_rows, len(ds))))
        return ds

    def _builder_for_patterns(self, root: Path) -> str:
        """The builder for data_files patterns: from their suffixes, else the folder's files."""
        pats = self.data_files
        flat = ([pats] if isinstance(pats, str) else
                [p for v in pats.values() for p in ([v] if isinstance(v, str) else v)]
                if isinstance(pats, dict) else list(pats))
        kinds = {_builder_for(p) for p in flat} - {None}
        if len(kinds) == 1:
            return kinds.pop()
        return local_files(root)[0]

    @staticmethod
    def column_names(ds) -> list[str]:
        """Columns of a dataset; a streaming one may not know them until its first row."""
        if ds.column_names:
            return list(ds.column_names)
        for row in ds.take(1):
            return list(row)
        return []

    # --- iteration --------------------------------------------------------------------------

    def iter_files(self, rank: int = 0, world_size: int = 1) -> Iterator[RawFile]:
        ds = self.load()
        cols = detect_columns(self.column_names(ds), self.columns)
        ds = ds.select_columns(sorted(set(cols.values())))
        ds, first = self._share(ds, rank, world_size)
        counts = {"rows": 0, "other_language": 0, "yielded": 0}
        for batch in ds.iter(batch_size=BATCH_ROWS):
            n = len(batch[cols["text"]])
            for j in range(n):
                row = {f: batch[c][j] for f, c in cols.items()}
                counts["rows"] += 1
                if not self._language_ok(row):
                    counts["other_language"] += 1
                    continue
                counts["yielded"] += 1
                yield self.to_raw(row, first + counts["rows"] - 1 if first is not None else None)
        log.info("hf source %s task %d/%d: %d rows, %d skipped as another language, %d yielded",
                 self.path, rank, world_size, counts["rows"], counts["other_language"],
                 counts["yielded"])

    def _share(self, ds, rank: int, world_size: int):
        """(this task's part, index of its first row in the split, or None when unknown)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if world_size == 1:
            return ds, 0
        if self.streaming:
            return split_dataset_by_node(ds, rank=rank, world_size=world_size), None
        n = len(ds)
        div, mod = divmod(n, world_size)
        start = div * rank + min(rank, mod)  # where datasets' contiguous shard starts
        return ds.shard(num_shards=world_size, index=rank, contiguous=True), start

    def _language_ok(self, row: dict) -> bool:
        """Keep a row when each configured language / extension column that exists allows it."""
        if self.languages is not None and "language" in row:
            if str(row["language"] or "").lower() not in self.languages:
                return False
        if self.extensions is not None and "ext" in row:
            if str(row["ext"] or "").lower().lstrip(".") not in self.extensions:
                return False
        return True

    def to_raw(self, row: dict, index: int | None) -> RawFile:
        """A RawFile from a mapped row; an error record when the text is missing or unusable."""
        text = row.get("text")
        license, allowed = _license(row.get("license"), self.licenses)
        repo = str(row.get("repo_name") or "")
        path = row.get("path")
        if not path:  # the id needs something stable: the content, else the row number
            path = (f"sha1-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()}"
                    if isinstance(text, str) else f"row-{index if index is not None else '?'}")
        rec = RawFile(source="hf", repo_name=repo, path=str(path), data=None, license=license,
                      stars=_stars(row.get("stars")))
        if index is not None:
            rec.extra["row"] = index
        if not isinstance(text, str):
            rec.error = "missing_text"
        elif not allowed:
            rec.error = "license_not_allowed"
            rec.extra["size"] = len(text.encode("utf-8", "surrogatepass"))
        else:
            try:
                rec.data = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: not a valid UTF-8 text file
                rec.error = "undecodable"
            else:
                rec.extra["size"] = len(rec.data)
        return rec
