"""Whitespace-aware byte-level BPE for Python code (Codex style), built with HF ``tokenizers``.

Why each piece is there:

* **Byte level** makes every string encodable and ``decode(encode(x)) == x`` exact: tabs, CRLF,
  a lone ``\\r``, form feeds, emoji, non-ASCII identifiers all go through as bytes.
* **A code-aware split regex** decides where BPE may *not* merge, and that is where compression
  is won. GPT-2's pattern cuts ``max_len_2`` into ``max``/``_``/``len``/``_``/``2`` and keeps a
  newline apart from the indentation after it; ours keeps identifiers (letters, digits,
  underscores) whole and lets a line break take the next line's indentation with it.
* **Explicit whitespace tokens** (runs of spaces, tabs, "\\n" + 4k spaces; Codex style) are
  available as added tokens but off by default: they are matched on the raw text before the
  split, which cuts the split's newline + indentation pieces apart (measured: 4.34 instead of
  4.72 bytes/token on held-out repositories; cl100k_base 4.24; see docs/benchmarks.md).

Token ids: the special tokens come first, ``<|endoftext|>`` = 0 then the four reserved FIM
tokens 1..4; then the 256 byte symbols and the learned merges; the whitespace tokens last. The
total is exactly ``vocab_size``. Special ids are only ever inserted by code (the
``<|endoftext|>`` after each document, the end of an SFT completion), never parsed from text: the
tokenizer ``load_tokenizer`` gives encodes a literal ``<|endoftext|>`` or ``<|fim_prefix|>`` in
any text (a document, a prompt, a canonical solution) as that text, with the same ids as the
token shards' encoding (tiktoken's ``encode_ordinary``). tokenizer.json itself, loaded some other
way, still parses them as special tokens.

Outputs in ``out_dir``: ``tokenizer.json`` (loadable by ``tokenizers.Tokenizer.from_file`` and
``transformers.PreTrainedTokenizerFast``), ``tokenizer_config.json`` (so
``AutoTokenizer.from_pretrained(out_dir)`` works), ``tokenizer_meta.json`` (vocab size, special
ids, the sha256 "tokenizer hash" that token shards record) and the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow.compute as pc
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from codegpt.config import dump_yaml, setting
from codegpt.documents import iter_tables, parquet_files, read_table
from codegpt.errors import TokenizerError
from codegpt.io import atomic_write_json, atomic_write_text, sha256_file
from codegpt.outputs import read_marker, require_complete, writing_aside

try:  # a dependency, but optional at run time: without it, encoding falls back to HF tokenizers
    import tiktoken
except ImportError:  # pragma: no cover - tiktoken is installed with codegpt
    tiktoken = None

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = ("<|fim_prefix|>", "<|fim_middle|>",
                                               "<|fim_suffix|>", "<|fim_pad|>")
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
HF_CONFIG_FILE = "tokenizer_config.json"

# GPT-2's split (what HF's ByteLevel(use_regex=True) applies): the baseline we compare against.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Code-aware split (Oniguruma syntax, used with behavior="isolated", so any text a branch does
# not match still becomes its own piece: the split can never lose a character). Measured on
# held-out packages at 49,152 ids (bytes/token): GPT-2's split 3.59; identifiers kept whole and
# newline joined to the indentation 3.79; + one leading space or punctuation character on a
# word (".append", "(self", "_x") 4.05; + punctuation runs take the following newline and
# indentation ("):\n        ") 4.36; + words and numbers take it too 4.40 (cl100k_base: 3.87).
_WORD = r"[\p{L}\p{M}_][\p{L}\p{M}\p{N}_]*"
_PUNCT = r"[^\s\p{L}\p{M}\p{N}_]"
_NEWLINE_INDENT = r"(?:[\r\n]+[ \t]*)?"
CODE_PATTERN = "|".join([
    r"[\r\n]+[ \t]*",                              # line break(s) + the next line's indentation
    r"(?: |" + _PUNCT + r")?" + _WORD + _NEWLINE_INDENT,  # [ .(]identifier[\n + indent]
    r" ?\p{N}+" + _NEWLINE_INDENT,                   # numbers (BPE decides how to chunk them)
    r" ?" + _PUNCT + r"+" + _NEWLINE_INDENT,          # operator / punctuation runs
    r"[^\S\r\n]+(?!\S)",                           # spaces before spaces/EOL; last one joins a word
    r"[^\S\r\n]+",                                 # any other horizontal whitespace
])
PATTERNS = {"code": CODE_PATTERN, "gpt2": GPT2_PATTERN}


@dataclass
class TokenizerConfig:
    """What to train on and what to build; see configs/tokenizer/default.yaml."""

    data_dir: str = "runs/data/default"        # data prep's output (its data/*.parquet)
    out_dir: str = "runs/tokenizer/default"
    # total, specials and whitespace tokens included (ids fit token shards' uint32)
    vocab_size: int = setting(49152, ge=1, le=2**32)
    min_frequency: int = setting(2, ge=0)       # pairs seen fewer times are not merged
    sample_mb: float = setting(48.0, gt=0)      # training sample (UTF-8 MB), drawn at random
    max_documents: int = setting(0, ge=0)       # 0: no limit besides sample_mb
    seed: int = setting(0, ge=0, lt=2**32)
    holdout_repos: list[str] = field(default_factory=list)  # never trained on (for measuring)
    pre_tokenizer: str = setting("code", choices=tuple(PATTERNS))  # code | gpt2
    # Codex-style explicit whitespace tokens, off by default: as added tokens they are cut out
    # before the split, which undoes its newline + indentation pieces (measured: 4.03 instead
    # of 4.40 bytes/token with space_runs [2, 32] and tab_runs [1, 8]).
    # (the upper bounds keep the whitespace tokens a list that fits in memory)
    space_runs: list[int] = setting(default_factory=list, ge=1, le=1024)  # [min, max]: [2, 32]
    tab_runs: list[int] = setting(default_factory=list, ge=1, le=1024)    # [1, 8]; [] for none
    newline_indent: int = setting(0, ge=0, le=1024)  # N>0: "\n" + k*indent_width spaces, k=1..N
    indent_width: int = setting(4, ge=1, le=32)
    model_max_length: int = setting(2048, ge=1)  # written to tokenizer_config.json (transformers)

    STAGE = "tokenizer"

    def __post_init__(self) -> None:
        for name in ("space_runs", "tab_runs"):
            runs = getattr(self, name)
            if runs and (len(runs) != 2 or not runs[0] <= runs[1]):
                raise ValueError(f"{name} must be [min, max] with 1 <= min <= max, or [], "
                                 f"got {runs}")
        floor = len(SPECIAL_TOKENS) + 256 + len(whitespace_tokens(self))
        if self.vocab_size <= floor:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no room for merges: specials, "
                             f"256 bytes and whitespace tokens already take {floor}")


def whitespace_tokens(cfg: TokenizerConfig) -> list[str]:
    """The explicit whitespace tokens, in id order."""
    out: list[str] = []
    if cfg.space_runs:
        out += [" " * n for n in range(cfg.space_runs[0], cfg.space_runs[1] + 1)]
    if cfg.tab_runs:
        out += ["\t" * n for n in range(cfg.tab_runs[0], cfg.tab_runs[1] + 1)]
    out += ["\n" + " " * (k * cfg.indent_width) for k in range(1, cfg.newline_indent + 1)]
    return out


def whitespace_splitter(tokens: Sequence[str]) -> re.Pattern | None:
    """A Python regex that finds the whitespace tokens the way HF's added vocabulary does
    (leftmost, then longest), so training sees the same boundaries that encoding will."""
    if not tokens:
        return None
    alts = sorted(set(tokens), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in alts))


# --- training data -------------------------------------------------------------------------

def sample_documents(data_dir: str | Path, sample_mb: float, seed: int = 0,
                     max_documents: int = 0, exclude_repos: Iterable[str] = ()) -> list[str]:
    """A seeded random sample of documents up to ``sample_mb`` MB of UTF-8.

    Reads sizes first and texts second, file by file, so only the sample is held in memory.
    """
    files = parquet_files(data_dir)
    exclude = set(exclude_repos)
    rows: list[tuple[int, int, int]] = []  # (file, row, bytes)
    for fi, f in enumerate(files):
        table = read_table(f, ["repo_name", "text"])
        sizes = pc.binary_length(table.column("text")).to_pylist()
        for ri, (repo, size) in enumerate(zip(table.column("repo_name").to_pylist(), sizes)):
            if size and repo not in exclude:
                rows.append((fi, ri, size))
    if not rows:
        raise TokenizerError(f"no documents in the parquet shards of {data_dir}"
                             + (f" outside holdout_repos {sorted(exclude)}" if exclude else ""))
    random.Random(seed).shuffle(rows)
    budget, used, chosen = int(sample_mb * 1e6), 0, []
    for row in rows:
        if used >= budget or (max_documents and len(chosen) >= max_documents):
            break
        chosen.append(row)
        used += row[2]
    chosen.sort()
    texts: list[str] = []
    for fi in sorted({r[0] for r in chosen}):
        column = read_table(files[fi], ["text"]).column("text")
        texts += [column[r[1]].as_py() for r in chosen if r[0] == fi]
    log.info("sampled %d of %d documents, %.1f MB, from %s", len(texts), len(rows), used / 1e6,
             data_dir)
    return texts


def repo_documents(data_dir: str | Path, repos: Iterable[str]) -> list[str]:
    """All documents of the given repositories (held-out files for measuring compression)."""
    wanted, out = set(repos), []
    for table in iter_tables(data_dir, ["repo_name", "text"]):
        out += [t for r, t in zip(table.column("repo_name").to_pylist(),
                                  table.column("text").to_pylist()) if r in wanted]
    return out


def _training_pieces(texts: Sequence[str], splitter: re.Pattern | None) -> Iterator[list[str]]:
    """Each document as a batch of the pieces between whitespace tokens.

    The BPE trainer does not split out added tokens, so without this it would spend merges on
    indentation runs that encoding never hands to BPE.
    """
    for text in tqdm(texts, desc="bpe", unit="doc", mininterval=2.0, disable=None):
        yield [p for p in splitter.split(text) if p] if splitter else [text]


# --- building ------------------------------------------------------------------------------

def build_tokenizer(pattern: str = CODE_PATTERN):
    """An untrained BPE with our split regex, byte-level alphabet and decoder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Sequence[str], cfg: TokenizerConfig):
    """Train on in-memory ``texts`` and return a ``tokenizers.Tokenizer`` of exactly
    ``cfg.vocab_size`` ids (specials first, whitespace tokens last)."""
    ws = whitespace_tokens(cfg)
    tok = build_tokenizer(PATTERNS[cfg.pre_tokenizer])
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size - len(ws), min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_pieces(texts, whitespace_splitter(ws)), trainer,
                            length=len(texts))
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ws])
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise TokenizerError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise TokenizerError(f"vocabulary came out at {tok.get_vocab_size()} > {cfg.vocab_size}")
    if tok.get_vocab_size() < cfg.vocab_size:
        log.warning("vocabulary is %d < vocab_size %d: the sample has too few distinct pairs "
                    "(raise sample_mb or lower min_frequency)", tok.get_vocab_size(),
                    cfg.vocab_size)
    return tok


def save_tokenizer(tok, out_dir: str | Path, cfg: TokenizerConfig, extra: dict | None = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json, tokenizer_meta.json and config.yaml,
    each atomically; the meta goes last, so its presence means the rest is whole."""
    out = Path(out_dir)
    path = out / TOKENIZER_FILE
    atomic_write_text(path, tok.to_str(pretty=False))
    atomic_write_json(out / HF_CONFIG_FILE, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOT, "bos_token": EOT, "unk_token": EOT, "pad_token": EOT,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.model_max_length,
    })
    dump_yaml(cfg, out / "config.yaml")
    meta = {
        "format": "codegpt-tokenizer-v1",
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_hash": tokenizer_hash(path),
        "vocab_size": tok.get_vocab_size(),
        "eot_id": tok.token_to_id(EOT),
        "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        "whitespace_tokens": len(whitespace_tokens(cfg)),
        "pre_tokenizer": cfg.pre_tokenizer,
        **(extra or {}),
    }
    atomic_write_json(out / META_FILE, meta)
    return path


def train_tokenizer(cfg: TokenizerConfig) -> Path:
    """Sample the parquet documents, train, save; returns the path of tokenizer.json. The
    folder is written aside and swapped in whole (``codegpt.outputs.writing_aside``)."""
    with writing_aside(cfg.out_dir, "tokenizer") as staging:
        texts = sample_documents(cfg.data_dir, cfg.sample_mb, cfg.seed, cfg.max_documents,
                                 cfg.holdout_repos)
        t0 = time.perf_counter()
        tok = train_bpe(texts, cfg)
        seconds = time.perf_counter() - t0
        log.info("trained %d-token vocabulary in %.1f s", tok.get_vocab_size(), seconds)
        sample = {"documents": len(texts), "mb": round(sum(len(t.encode("utf-8", "surrogatepass"))
                                                           for t in texts) / 1e6, 3),
                  "train_seconds": round(seconds, 1)}
        save_tokenizer(tok, staging, cfg, {"sample": sample})
    return Path(cfg.out_dir) / TOKENIZER_FILE


# --- loading and using -----------------------------------------------------------------------

def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json that ``path`` names: the file itself, or the one inside a folder (a
    tokenizer folder, or another finished output that bundles one, such as an export). A folder
    must be complete (``codegpt.outputs.require_complete``); a TokenizerError when there is no
    tokenizer file."""
    p = Path(path)
    if p.is_dir():
        stage = (read_marker(p) or {}).get("stage") or "tokenizer"
        # a tokenizer folder, or another finished output that holds one (an export)
        require_complete(p, stage, legacy_file=TOKENIZER_FILE)
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise TokenizerError(f"no tokenizer at {path} (train one with `codegpt tokenizer`)")
    return p


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """A ``tokenizers.Tokenizer`` from tokenizer.json or the folder holding it; with
    ``vocab_size`` (a model's), a tokenizer of another size is refused. It encodes the special
    tokens' strings as plain text (``encode_special_tokens``): every text is user text, and a
    special id comes only from code (``token_to_id``). Decoding is unchanged."""
    file = tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise TokenizerError(f"{file} is not a tokenizer file ({e})") from e
    tok.encode_special_tokens = True
    if vocab_size is not None and tok.get_vocab_size() != vocab_size:
        raise TokenizerError(f"the tokenizer {path} has {tok.get_vocab_size()} tokens but the model "
                             f"has vocab_size={vocab_size}: use the tokenizer it was trained with")
    return tok


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (printable stand-ins for the 256 bytes), reversed."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def fast_encoder(path: str | Path):
    """The same tokenizer on tiktoken's BPE engine (several times faster), or None.

    A byte-level BPE trained by HF gives each merged token an id in merge order, so its ids are
    the merge ranks tiktoken expects, and our split regex is tiktoken's ``pat_str``. With
    added whitespace tokens (matched before the split, which tiktoken cannot do) or without
    tiktoken installed, None: use the HF tokenizer. Tests check both give identical ids.
    ``encode_ordinary`` treats a literal special-token string in a document as plain text.
    """
    if tiktoken is None:
        return None
    spec = json.loads(tokenizer_file(path).read_text())
    if any(not t.get("special") for t in spec.get("added_tokens", [])):
        return None
    try:
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    except (KeyError, IndexError, TypeError):
        return None
    to_byte = byte_decoder()
    ranks = {bytes(to_byte[c] for c in token): i for token, i in spec["model"]["vocab"].items()
             if token not in SPECIAL_TOKENS}
    return tiktoken.Encoding(name="codegpt", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={t: i for i, t in enumerate(SPECIAL_TOKENS)})


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of tokenizer.json: token shards record it so that a model never trains on ids
    from one tokenizer and is evaluated with another."""
    return sha256_file(tokenizer_file(path))


def bytes_per_token(encode: Callable[[str], Sequence[int]], texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over ``texts``: the compression figure we compare tokenizers by."""
    n_bytes = n_tokens = 0
    for t in texts:
        n_bytes += len(t.encode("utf-8", "surrogatepass"))
        n_tokens += len(encode(t))
    if not n_tokens:
        raise TokenizerError("no tokens to measure")
    return n_bytes / n_tokens
