"""The Hugging Face dataset source, on small local parquet and jsonl files (never the hub)."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.errors import ConfigError
from data_prep.pipeline import build_sources
from data_prep.sources import registry
from data_prep.sources.hf import HFSource, detect_columns

STACK_ROWS = [  # the-stack layout
    {"content": "import os\nprint(os.sep)\n", "max_stars_repo_name": "alice/tools",
     "max_stars_repo_path": "src/a.py", "max_stars_count": 12.0,
     "max_stars_repo_licenses": ["MIT"], "lang": "Python", "ext": "py"},
    {"content": "def f():\n    return 'é'\n", "max_stars_repo_name": "bob/lib",
     "max_stars_repo_path": "lib/b.py", "max_stars_count": None,
     "max_stars_repo_licenses": ["GPL-3.0", "Apache-2.0"], "lang": "Python", "ext": "py"},
    {"content": "console.log(1)\n", "max_stars_repo_name": "carol/web",
     "max_stars_repo_path": "index.js", "max_stars_count": 3.0,
     "max_stars_repo_licenses": ["MIT"], "lang": "JavaScript", "ext": "js"},
    {"content": "x = 1\n", "max_stars_repo_name": "dave/gui", "max_stars_repo_path": "run.pyw",
     "max_stars_count": 1.0, "max_stars_repo_licenses": ["BSD-3-Clause"], "lang": "Python",
     "ext": "pyw"},
    {"content": None, "max_stars_repo_name": "erin/empty", "max_stars_repo_path": "e.py",
     "max_stars_count": 0.0, "max_stars_repo_licenses": ["MIT"], "lang": "Python", "ext": "py"},
]

CODE_ROWS = [  # github-code layout
    {"code": "print('hi')\n", "repo_name": "frank/hello", "path": "hello.py",
     "license": "mit", "language": "Python", "size": 12},
    {"code": "int main(){}\n", "repo_name": "gina/c", "path": "m.c", "license": "mit",
     "language": "C", "size": 13},
    {"code": None, "repo_name": "hank/gone", "path": "gone.py", "license": "apache-2.0",
     "language": "Python", "size": 0},
    {"code": "y = 2\n", "repo_name": "ivy/y", "path": "y.py", "license": "gpl-2.0",
     "language": "Python", "size": 6},
]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def files(source, rank=0, world_size=1):
    return list(source.iter_files(rank, world_size))


@pytest.fixture
def stack_parquet(tmp_path):
    path = tmp_path / "stack" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(STACK_ROWS), path)
    return path


@pytest.fixture
def code_jsonl(tmp_path):
    (tmp_path / "code").mkdir()
    return write_jsonl(tmp_path / "code" / "rows.jsonl", CODE_ROWS)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf-cache")


def test_the_stack_layout_fields(stack_parquet, cache):
    out = files(HFSource(str(stack_parquet.parent), cache_dir=cache))
    assert [f.path for f in out] == ["src/a.py", "lib/b.py", "e.py"]  # js and .pyw dropped
    a, b, missing = out
    assert (a.source, a.repo_name, a.license, a.stars, a.error) == ("hf", "alice/tools", "mit", 12, None)
    assert a.data == STACK_ROWS[0]["content"].encode()
    assert b.data.decode("utf-8") == STACK_ROWS[1]["content"]  # UTF-8 bytes, decoded again
    assert b.stars is None and b.license == "gpl-3.0"
    assert a.extra["size"] == len(a.data)
    assert missing.data is None and missing.error == "missing_text"
    assert len({f.id for f in out}) == 3


def test_github_code_layout_from_jsonl(code_jsonl, cache):
    out = files(HFSource(str(code_jsonl), cache_dir=cache))
    assert [(f.repo_name, f.path, f.license, f.error) for f in out] == [
        ("frank/hello", "hello.py", "mit", None),
        ("hank/gone", "gone.py", "apache-2.0", "missing_text"),
        ("ivy/y", "y.py", "gpl-2.0", None),
    ]
    assert out[0].data == b"print('hi')\n" and out[0].stars is None


def test_language_filter_can_be_widened(stack_parquet, cache):
    any_ext = files(HFSource(str(stack_parquet), extensions=None, cache_dir=cache))
    assert "run.pyw" in [f.path for f in any_ext] and "index.js" not in [f.path for f in any_ext]
    everything = files(HFSource(str(stack_parquet), languages=None, extensions=None,
                                cache_dir=cache))
    assert len(everything) == len(STACK_ROWS)


def test_license_allowlist(stack_parquet, code_jsonl, cache):
    out = {f.path: f for f in files(HFSource(str(stack_parquet), licenses=["MIT", "apache-2.0"],
                                             cache_dir=cache))}
    assert out["src/a.py"].error is None
    # a repository listing several licenses is kept when any of them is allowed
    assert out["lib/b.py"].error is None and out["lib/b.py"].license == "apache-2.0"
    code = {f.path: f for f in files(HFSource(str(code_jsonl), licenses=["mit"], cache_dir=cache))}
    assert code["y.py"].error == "license_not_allowed" and code["y.py"].data is None
    assert code["hello.py"].error is None


def test_unknown_columns_need_a_mapping(tmp_path, cache):
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": "z = 3\n", "file": "z.py", "who": "jo/z"}]), path)
    with pytest.raises(ConfigError) as err:
        files(HFSource(str(path), cache_dir=cache))
    assert "body" in str(err.value) and "file" in str(err.value) and "columns" in str(err.value)
    out = files(HFSource(str(path), columns={"text": "body", "path": "file", "repo_name": "who"},
                         cache_dir=cache))
    assert [(f.repo_name, f.path, f.data) for f in out] == [("jo/z", "z.py", b"z = 3\n")]


def test_mapping_errors_name_the_problem():
    with pytest.raises(ConfigError, match="not in the dataset"):
        detect_columns(["code", "path"], {"text": "contents"})
    with pytest.raises(ConfigError, match="unknown field"):
        detect_columns(["code"], {"txt": "code"})
    assert detect_columns(["code", "path", "x"], {"path": None}) == {"text": "code"}


def make_shards(tmp_path, n_files=3, rows_per_file=7):
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(n_files):
        rows = [{"code": f"v = {k * 100 + i}\n", "repo_name": f"r/{k}", "path": f"f{i}.py",
                 "license": "mit", "language": "Python"} for i in range(rows_per_file)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{k}.parquet")
    return folder, n_files * rows_per_file


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_tasks_cover_every_row_once(tmp_path, cache, streaming, world_size):
    folder, total = make_shards(tmp_path)
    source = HFSource(str(folder), streaming=streaming, cache_dir=cache)
    parts = [[f.id for f in files(source, r, world_size)] for r in range(world_size)]
    seen = Counter(i for part in parts for i in part)
    assert len(seen) == total and set(seen.values()) == {1}
    assert all(parts)  # every task gets work
    assert parts == [[f.id for f in files(source, r, world_size)] for r in range(world_size)]


def test_data_files_and_max_rows(tmp_path, cache):
    folder, total = make_shards(tmp_path)
    one = files(HFSource(str(folder), data_files="part-1.parquet", cache_dir=cache))
    assert [f.repo_name for f in one] == ["r/1"] * 7
    capped = HFSource(str(folder), max_rows=5, cache_dir=cache)
    assert len(files(capped, 0, 2)) + len(files(capped, 1, 2)) == 5


def test_missing_local_files_are_a_clear_error(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no parquet or json"):
        files(HFSource(str(tmp_path / "empty"), cache_dir=cache))


def test_registered_and_built_from_a_config_dict(stack_parquet, cache):
    assert registry()["hf"] is HFSource
    assert sorted(registry()) == ["git", "github", "hf", "local"]  # none left out quietly
    (source,) = build_sources([{"type": "hf", "path": str(stack_parquet), "cache_dir": cache,
                                "licenses": ["mit"]}])
    assert [f.path for f in files(source) if f.error is None] == ["src/a.py"]
    with pytest.raises(ConfigError, match="did you mean 'licenses'"):
        build_sources([{"type": "hf", "path": str(stack_parquet), "license": ["mit"]}])
