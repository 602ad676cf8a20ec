"""Token shards: encode data prep's documents with the trained tokenizer (``codegpt tokenize``).

Documents are read through ``codegpt.documents`` (ordered by id), shuffled at document level
with a seed, split into train and val by repository with ``split_repositories`` (balanced by
bytes, no repository in both), encoded in batches on every core, and appended to uint16/uint32
shards, each document followed by ``<|endoftext|>``. ``meta.json`` records the dtype, vocabulary size, eot id,
tokens per shard and the tokenizer's hash, which training and evaluation check against the
tokenizer they are given.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from codegpt.config import setting
from codegpt.documents import read_documents, repository_bytes, split_repositories, utf8_size
from codegpt.outputs import writing_aside
from codegpt.tokenizer.bpe import EOT, fast_encoder, load_tokenizer, tokenizer_hash
from codegpt.tokenizer.shards import SPLITS, ShardError, ShardWriter, read_meta, write_meta

log = logging.getLogger(__name__)


@dataclass
class TokenizeConfig:
    data_dir: str = "runs/data/default"              # data prep's output (its data/*.parquet)
    tokenizer: str = "runs/tokenizer/default"        # folder or tokenizer.json
    out_dir: str = "runs/tokens/default"
    val_fraction: float = setting(0.01, ge=0, lt=1)  # share of the bytes held out, by repository
    seed: int = setting(0, ge=0, lt=2**32)
    max_mb: float = setting(0.0, ge=0)               # stop after this many MB of text (0: all)
    tokens_per_shard: int = setting(100_000_000, ge=1)
    batch_docs: int = setting(256, ge=1)             # documents per encode_batch call
    engine: str = setting("auto", choices=("auto", "hf"))  # auto: tiktoken when it can

    STAGE = "tokens"


def make_encoder(cfg: TokenizeConfig):
    """A function from a batch of texts to their ids: tiktoken's engine with our merges where
    possible (same ids, several times faster), else HF tokenizers' encode_batch. Either
    encodes a special token's string as text (``load_tokenizer``, tiktoken's
    ``encode_ordinary``), so a document that contains ``<|endoftext|>`` can never pose as a
    document boundary."""
    tok = load_tokenizer(cfg.tokenizer)
    fast = fast_encoder(cfg.tokenizer) if cfg.engine == "auto" else None
    if fast is not None:
        threads = os.cpu_count() or 1
        return tok, lambda texts: fast.encode_ordinary_batch(texts, num_threads=threads)
    return tok, lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def tokenize(cfg: TokenizeConfig) -> dict:
    """Encode the documents into shards written aside and swapped in at ``out_dir`` when
    complete (``codegpt.outputs.writing_aside``): a rerun that is killed or fails leaves the
    previous shards and their meta.json as they were."""
    with writing_aside(cfg.out_dir, "tokenize") as out:
        return _write_shards(cfg, out)


def _write_shards(cfg: TokenizeConfig, out: Path) -> dict:
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
            used += utf8_size(text)
            if used >= budget:
                break
        docs = docs[:keep]
    val_repos = split_repositories(repository_bytes((repo, utf8_size(text)) for _, repo, text in docs),
                                   cfg.val_fraction, cfg.seed)
    writers = {s: ShardWriter(out, s, vocab, eot, cfg.tokens_per_shard) for s in SPLITS}
    bar = tqdm(total=sum(len(d[2]) for d in docs), unit="B", unit_scale=True, desc="tokenize",
               disable=None)  # None: only on a terminal, never in logs or captured output
    for i in range(0, len(docs), cfg.batch_docs):
        batch = docs[i: i + cfg.batch_docs]
        for (_, repo, text), ids in zip(batch, encode([d[2] for d in batch])):
            writers["val" if repo in val_repos else "train"].add(ids)
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
