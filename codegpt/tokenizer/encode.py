"""Token shards: encode data prep's documents with the trained tokenizer.

Documents are read from the parquet shards, ordered by id and shuffled at document level with
a seed, split into train and val by repository (no repository in both), encoded in batches
(HF tokenizers' ``encode_batch`` runs on every core), and appended to uint16/uint32 shards, each
document followed by ``<|endoftext|>``. ``meta.json`` records the dtype, vocabulary size, eot id,
tokens per shard and the tokenizer's hash, which training and evaluation check against the
tokenizer they are given.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


from codegpt.config import (ConfigError, add_config_arguments, deep_merge, find_named_config,
                            from_dict, parse_overrides, read_yaml)
from codegpt.tokenizer.shards import SPLITS, ShardError, ShardWriter, read_meta, write_meta
from codegpt.tokenizer.bpe import EOT, fast_encoder, load_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)


@dataclass
class TokenizeConfig:
    data_dir: str = "runs/data/default/data"         # data prep's parquet shards
    tokenizer: str = "runs/tokenizer/default"        # folder or tokenizer.json
    out_dir: str = "runs/tokens/default"
    val_fraction: float = 0.01                       # share of repositories held out for val
    seed: int = 0
    max_mb: float = 0.0                              # stop after this many MB of text (0: all)
    tokens_per_shard: int = 100_000_000
    batch_docs: int = 256                            # documents per encode_batch call
    engine: str = "auto"                             # auto (tiktoken when it can) | hf


def load_tokenize_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TokenizeConfig:
    raw = read_yaml(find_named_config("tokens", str(path))) if path else {}
    cfg = from_dict(TokenizeConfig, deep_merge(raw, parse_overrides(overrides)))
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    return cfg


def read_documents(data_dir: str | Path) -> list[tuple[str, str, str]]:
    """(id, repo_name, text) of every document, ordered by id (independent of shard layout)."""
    import pyarrow.parquet as pq

    files = sorted(Path(data_dir).glob("*.parquet"))
    if not files:
        raise ShardError(f"no parquet shards in {data_dir}: run `codegpt prep` / `make data` first")
    docs = []
    for f in files:
        t = pq.read_table(f, columns=["id", "repo_name", "text"])
        docs.extend(zip(t.column("id").to_pylist(), t.column("repo_name").to_pylist(),
                        t.column("text").to_pylist()))
    if not docs:
        raise ShardError(f"the parquet shards in {data_dir} hold no documents: nothing to encode")
    docs.sort(key=lambda d: d[0])
    return docs


def split_of(repo: str, val_fraction: float) -> str:
    """A stable function of the repository name: the same repo always lands in one split."""
    bucket = int.from_bytes(hashlib.sha256(repo.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return "val" if bucket / 2**64 < val_fraction else "train"


def plain_tokenizer(path: str | Path):
    """The tokenizer without its special tokens as added tokens: a document that contains the
    string ``<|endoftext|>`` is encoded as that text, so it can never pose as a document
    boundary (the same as tiktoken's ``encode_ordinary``). Whitespace tokens stay."""
    import json

    from tokenizers import Tokenizer

    from codegpt.tokenizer.bpe import _tokenizer_file

    spec = json.loads(_tokenizer_file(path).read_text())
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if not t.get("special")]
    return Tokenizer.from_str(json.dumps(spec))


def make_encoder(cfg: TokenizeConfig):
    """A function from a batch of texts to their ids: tiktoken's engine with our merges where
    possible (same ids, several times faster), else HF tokenizers' encode_batch."""
    import os

    tok = load_tokenizer(cfg.tokenizer)
    fast = fast_encoder(cfg.tokenizer) if cfg.engine == "auto" else None
    if fast is not None:
        threads = os.cpu_count() or 1
        return tok, lambda texts: fast.encode_ordinary_batch(texts, num_threads=threads)
    plain = plain_tokenizer(cfg.tokenizer)
    return tok, lambda texts: [e.ids for e in plain.encode_batch(texts, add_special_tokens=False)]


def tokenize(cfg: TokenizeConfig) -> dict:
    from tqdm import tqdm

    if cfg.engine not in ("auto", "hf"):
        raise ConfigError(f"engine must be auto or hf, got {cfg.engine!r}")
    tok, encode = make_encoder(cfg)
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ShardError(f"the tokenizer in {cfg.tokenizer} has no {EOT} token")
    vocab = tok.get_vocab_size()
    docs = read_documents(cfg.data_dir)
    random.Random(cfg.seed).shuffle(docs)
    if cfg.max_mb > 0:
        budget, used, keep = cfg.max_mb * 1e6, 0, 0
        for keep, (_, _, text) in enumerate(docs, start=1):
            used += len(text.encode("utf-8", "surrogatepass"))
            if used >= budget:
                break
        docs = docs[:keep]
    out = Path(cfg.out_dir)
    for split in SPLITS:  # a rerun replaces the shards whole
        shutil.rmtree(out / split, ignore_errors=True)
    writers = {s: ShardWriter(out, s, vocab, eot, cfg.tokens_per_shard) for s in SPLITS}
    bar = tqdm(total=sum(len(d[2]) for d in docs), unit="B", unit_scale=True, desc="tokenize")
    for i in range(0, len(docs), cfg.batch_docs):
        batch = docs[i: i + cfg.batch_docs]
        for (_, repo, text), ids in zip(batch, encode([d[2] for d in batch])):
            writers[split_of(repo, cfg.val_fraction)].add(ids)
        bar.update(sum(len(d[2]) for d in batch))
    bar.close()
    splits = {s: w.finish() for s, w in writers.items()}
    if splits["train"]["tokens"] == 0:
        raise ShardError("every document went to val: lower val_fraction or add repositories")
    return write_meta(out, vocab, eot, str(cfg.tokenizer), tokenizer_hash(cfg.tokenizer), splits,
                      cfg.tokens_per_shard)


def check_tokenizer(token_dir: str | Path, tokenizer: str | Path) -> None:
    """Refuse shards made with another tokenizer than the one given."""
    meta = read_meta(token_dir)
    tok = load_tokenizer(tokenizer)
    if tok.get_vocab_size() != meta["vocab_size"]:
        raise ShardError(f"the tokenizer {tokenizer} has {tok.get_vocab_size()} ids but the shards in "
                         f"{token_dir} were made with a vocabulary of {meta['vocab_size']}")
    if meta.get("tokenizer_hash") != tokenizer_hash(tokenizer):
        raise ShardError(f"the shards in {token_dir} were made with another tokenizer (hash "
                         f"{str(meta.get('tokenizer_hash'))[:12]}…, this one "
                         f"{tokenizer_hash(tokenizer)[:12]}…); re-run `codegpt tokenize`")


def cmd_tokenize(args: argparse.Namespace) -> int:
    from codegpt.tokenizer.bpe import TokenizerError

    try:
        meta = tokenize(load_tokenize_config(args.config, args.overrides))
    except (ConfigError, ShardError, TokenizerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens in "
              f"{len(info['shards'])} shard(s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tokenize", help="encode data prep's documents into token shards")
    add_config_arguments(p, "tokens", nested=False)
    p.set_defaults(func=cmd_tokenize)
