"""Tokenizer: bytes per token on held-out Python and encoding speed, against cl100k / o200k.

Trains our tokenizer (the default config), the same BPE with Codex-style whitespace tokens, and
a GPT-2-split BPE, all at the same vocabulary size on the same sample of data prep's documents;
held-out repositories (never in the sample) measure compression for those and for OpenAI's
cl100k_base and o200k_base (their ranks ship offline in the `bpe-openai` package). Encoding speed
is compared with tiktoken on cl100k, one thread and all cores; finally every kept document is
round-tripped through our tokenizer.

    python -m bench.bench_tokenizer [--data runs/data/default/data] [--sample-mb 40]

Prints a table and writes runs/bench/bench_tokenizer.json (or --out).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.tokenizer.bpe import (TokenizerConfig, bytes_per_token, fast_encoder,
                                   repo_documents, sample_documents, train_bpe)

NAME = "bench_tokenizer"


def held_out_repos(data: Path, target_mb: float) -> list[str]:
    """Repositories chosen by a hash of their name until they hold ``target_mb`` MB."""
    import pyarrow.parquet as pq

    sizes: dict[str, int] = {}
    for f in sorted(data.glob("*.parquet")):
        t = pq.read_table(f, columns=["repo_name", "size"])
        for repo, size in zip(t.column("repo_name").to_pylist(), t.column("size").to_pylist()):
            sizes[repo] = sizes.get(repo, 0) + size
    order = sorted(sizes, key=lambda r: hashlib.sha256(r.encode()).hexdigest())
    chosen, total = [], 0
    for repo in order:
        if sizes[repo] > target_mb * 1e6 / 2:  # no single giant repository
            continue
        chosen.append(repo)
        total += sizes[repo]
        if total >= target_mb * 1e6:
            break
    return chosen


def openai_encodings() -> dict:
    import tiktoken
    from bpe_openai import registry

    return {name: tiktoken.Encoding(**getattr(registry, name)()) for name in ("cl100k_base", "o200k_base")}


def throughput(fn, texts, repeat: int = 1) -> float:
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t0)
    return mb / best


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--data", default="runs/data/default/data", help="data prep's parquet folder")
    ap.add_argument("--sample-mb", type=float, default=40.0)
    ap.add_argument("--heldout-mb", type=float, default=30.0)
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()
    data = Path(args.data)
    if not list(data.glob("*.parquet")):
        sys.exit(f"no parquet shards in {data}: run `make data` first")

    held_repos = held_out_repos(data, args.heldout_mb)
    held = repo_documents(data, held_repos)
    held_mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in held) / 1e6
    texts = sample_documents(data, args.sample_mb, 0, 0, held_repos)
    print(f"{cpu_name()}, {os.cpu_count()} cores; sample {args.sample_mb:.0f} MB "
          f"({len(texts)} docs), held out {held_mb:.1f} MB ({len(held)} files, "
          f"{len(held_repos)} repositories)")

    base = TokenizerConfig(vocab_size=args.vocab)
    variants = {
        "codegpt (default)": base,
        "codegpt + Codex whitespace tokens": replace(base, space_runs=[2, 32], tab_runs=[1, 8],
                                                     newline_indent=8),
        "GPT-2 split, same BPE": replace(base, pre_tokenizer="gpt2"),
    }
    rows = {}
    trained = {}
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        tok = train_bpe(texts, cfg)
        trained[name] = tok
        enc = lambda s, tok=tok: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
        rows[name] = {"bytes_per_token": bytes_per_token(enc, held), "vocab": tok.get_vocab_size(),
                      "train_s": time.perf_counter() - t0}
    encs = openai_encodings()
    for name, enc in encs.items():
        rows[name] = {"bytes_per_token": bytes_per_token(enc.encode_ordinary, held),
                      "vocab": enc.n_vocab}
    for name, r in rows.items():
        print(f"  {name:36s} {r['bytes_per_token']:6.3f} bytes/token  (vocab {r['vocab']:,})")
    ours = trained["codegpt (default)"]
    cl100k = encs["cl100k_base"]
    with tempfile.TemporaryDirectory() as tmp:
        ours.save(str(Path(tmp) / "tokenizer.json"))
        fast = fast_encoder(tmp)  # the engine `codegpt tokenize` uses: tiktoken with our merges
    same = all(fast.encode_ordinary(t) == ours.encode(t, add_special_tokens=False).ids for t in held)
    print(f"  tiktoken engine gives HF's ids on every held-out file: {same}")
    speed = {
        "codegpt (HF tokenizers), 1 thread": throughput(lambda ts: [ours.encode(t, add_special_tokens=False) for t in ts], held),
        "codegpt (HF tokenizers), encode_batch": throughput(lambda ts: ours.encode_batch(ts, add_special_tokens=False), held),
        "codegpt (tiktoken engine), 1 thread": throughput(lambda ts: [fast.encode_ordinary(t) for t in ts], held),
        f"codegpt (tiktoken engine), {os.cpu_count()} threads": throughput(
            lambda ts: fast.encode_ordinary_batch(ts, num_threads=os.cpu_count()), held),
        "tiktoken cl100k, 1 thread": throughput(lambda ts: [cl100k.encode_ordinary(t) for t in ts], held),
        f"tiktoken cl100k, {os.cpu_count()} threads": throughput(
            lambda ts: cl100k.encode_ordinary_batch(ts, num_threads=os.cpu_count()), held),
    }
    for name, v in speed.items():
        print(f"  {name:36s} {v:6.2f} MB/s")

    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    n_docs = n_bad = n_bytes = 0
    for f in sorted(data.glob("*.parquet")):
        docs = pq.read_table(f, columns=["text"]).column("text").to_pylist()
        encoded = ours.encode_batch(docs, add_special_tokens=False)
        decoded = ours.decode_batch([e.ids for e in encoded], skip_special_tokens=False)
        n_bad += sum(a != b for a, b in zip(docs, decoded))
        n_docs += len(docs)
        n_bytes += sum(len(d.encode("utf-8", "surrogatepass")) for d in docs)
    rt_s = time.perf_counter() - t0
    print(f"  round trip: {n_docs:,} documents, {n_bytes / 1e6:.1f} MB, {n_bad} mismatches, {rt_s:.1f} s")

    ratio_pack = rows["codegpt (default)"]["bytes_per_token"] / rows["cl100k_base"]["bytes_per_token"]
    ratio_speed = speed["codegpt (tiktoken engine), 1 thread"] / speed["tiktoken cl100k, 1 thread"]
    print(f"  packing vs cl100k: {ratio_pack:.3f}x; encoding speed vs tiktoken (1 thread): {ratio_speed:.2f}x")
    report = {"benchmark": "tokenizer", "date": date.today().isoformat(), "cpu": cpu_name(),
              "cores": os.cpu_count(), "sample_mb": args.sample_mb, "heldout_mb": held_mb,
              "heldout_repos": held_repos, "compression": rows, "speed_mb_s": speed,
              "round_trip": {"documents": n_docs, "mb": n_bytes / 1e6, "mismatches": n_bad,
                             "seconds": rt_s},
              "packing_vs_cl100k": ratio_pack, "speed_vs_tiktoken_1thread": ratio_speed,
              "tiktoken_engine_identical_ids": same,
              "command": command_line(NAME)}
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
