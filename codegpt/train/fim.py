"""Fill-in-the-middle (Bavarian et al. 2022) in pretraining: the context-level transform.

Applied in the loader, after packing. A window of ``T + 1`` token ids (``TokenWindows``) is cut
at its ``<|endoftext|>`` ids into document pieces (the first and last may be parts of a
document). Each piece is transformed with probability ``fim_rate``:

* its ids are decoded to text (a piece whose bytes are not whole UTF-8, a character cut by the
  window's edge, is left as it is), two character positions are drawn uniformly at random and
  sorted, and the text is cut there into prefix, middle and suffix, each encoded again as plain
  text (a literal ``<|fim_prefix|>`` in the source stays text, never the special id);
* PSM order, ``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle``, or with
  probability ``fim_spm_rate`` SPM order as StarCoder and SantaCoder lay it out,
  ``<|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle``, so that in both the
  middle comes last and the document's ``<|endoftext|>`` (kept where it was) ends it.

The pieces are joined again with their ``<|endoftext|>`` ids and the window is cut back to its
length (three special ids, and re-encoding, make it longer) or padded with ``<|fim_pad|>``,
which takes no loss. Every other position takes loss, the special ids included, as in the
paper.

Each window's draws come from its own generator, seeded by (run seed, epoch, example number):
the same config, seed and step give the same transformed batch on any number of processes,
and a resumed run, whose position is (epoch, cursor), sees the same batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from codegpt.tokenizer.bpe import (EOT, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS,
                                   byte_decoder, fast_encoder, load_tokenizer)
from codegpt.train.batches import IGNORE_INDEX, TokenWindows

FIM_STREAM = 0x46494D  # keeps the transform's random stream apart from any other of the run
SPECIAL_ID = {t: i for i, t in enumerate(SPECIAL_TOKENS)}  # the tokenizer's fixed ids


@dataclass(frozen=True)
class Codec:
    """Text to ids and ids to bytes, with the tokenizer of the token shards."""

    encode: Callable[[str], list[int]]      # a special token's text encodes as text
    decode_bytes: Callable[[Sequence[int]], bytes]


def make_codec(tokenizer: str | Path) -> Codec:
    """tiktoken's engine with our merges where it can (the token shards' own encoder), else the
    HF tokenizer: the same ids either way (tests/test_tokenize.py)."""
    fast = fast_encoder(tokenizer)
    if fast is not None:
        return Codec(fast.encode_ordinary, lambda ids: fast.decode_bytes([int(i) for i in ids]))
    tok = load_tokenizer(tokenizer)
    to_byte = byte_decoder()
    pieces = [b""] * tok.get_vocab_size()
    for token, i in tok.get_vocab().items():
        if token in SPECIAL_ID:
            pieces[i] = token.encode()
        elif all(c in to_byte for c in token):
            pieces[i] = bytes(to_byte[c] for c in token)
        else:  # an added (whitespace) token is its text
            pieces[i] = token.encode()
    return Codec(lambda text: tok.encode(text, add_special_tokens=False).ids,
                 lambda ids: b"".join(pieces[int(i)] for i in ids))


@dataclass(frozen=True)
class Fim:
    """The transform's rates and the ids it inserts."""

    rate: float           # share of document pieces transformed
    spm_rate: float       # share of those in SPM order (the rest PSM)
    eot: int = SPECIAL_ID[EOT]
    prefix: int = SPECIAL_ID[FIM_PREFIX]
    middle: int = SPECIAL_ID[FIM_MIDDLE]
    suffix: int = SPECIAL_ID[FIM_SUFFIX]
    pad: int = SPECIAL_ID[FIM_PAD]

    def window(self, ids: np.ndarray, rng: np.random.Generator, codec: Codec,
               counts=None) -> np.ndarray:
        """One window transformed: its pieces between ``<|endoftext|>`` ids, each with
        probability ``rate``, then cut or padded back to its length. ``counts`` (an object with
        ``pieces`` and ``transformed``) is told how many pieces there were and were changed."""
        length = len(ids)
        parts: list[np.ndarray | list[int]] = []
        start = 0
        for end in [*np.flatnonzero(ids == self.eot).tolist(), length]:
            piece = ids[start:end]
            if len(piece) and rng.random() < self.rate:
                changed = self.piece(piece, rng, codec)
                if counts is not None:
                    counts.transformed += changed is not None
                piece = piece if changed is None else changed
            if counts is not None:
                counts.pieces += len(piece) > 0
            parts.append(piece)
            if end < length:
                parts.append([self.eot])
            start = end + 1
        out = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])[:length]
        if len(out) < length:
            out = np.concatenate([out, np.full(length - len(out), self.pad, dtype=np.int64)])
        return out

    def piece(self, ids: np.ndarray, rng: np.random.Generator, codec: Codec
              ) -> list[int] | None:
        """One document piece in PSM or SPM order; None where its bytes are not text (a
        character cut at the window's edge), so it stays as it was."""
        spm = rng.random() < self.spm_rate
        cut = rng.random(2)  # two positions, uniform over the text's characters
        try:
            text = codec.decode_bytes(ids).decode("utf-8")
        except UnicodeDecodeError:
            return None
        lo, hi = sorted(int(c * (len(text) + 1)) for c in cut)
        prefix, middle, suffix = (codec.encode(t) for t in (text[:lo], text[lo:hi], text[hi:]))
        return self.layout(prefix, suffix, middle, spm)

    def layout(self, prefix: list[int], suffix: list[int], middle: list[int],
               spm: bool) -> list[int]:
        """The training (and, without ``middle``, the infilling prompt's) order of the parts."""
        if spm:
            return [self.prefix, self.suffix, *suffix, self.middle, *prefix, *middle]
        return [self.prefix, *prefix, self.suffix, *suffix, self.middle, *middle]


class FimWindows:
    """``TokenWindows`` with the FIM transform: (inputs, targets) pairs whose padding takes no
    loss. A window's draws depend only on (seed, epoch, its number)."""

    draws_per_epoch = True  # DistributedBatches passes the epoch to ``batch``

    def __init__(self, windows: TokenWindows, fim: Fim, codec: Codec, seed: int):
        self.windows = windows
        self.fim = fim
        self.codec = codec
        self.seed = seed
        self.seq_len = windows.seq_len
        self.transformed = 0  # document pieces transformed so far (this process)
        self.pieces = 0       # document pieces seen so far

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, indices: Sequence[int], epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        windows = self.windows.index.batch(indices)  # [b, T + 1]
        out = np.stack([
            self.fim.window(w.astype(np.int64),
                            np.random.default_rng([FIM_STREAM, self.seed, epoch, int(i)]),
                            self.codec, self)
            for i, w in zip(indices, windows)])
        inputs, targets = out[:, :-1], out[:, 1:].copy()
        targets[targets == self.fim.pad] = IGNORE_INDEX
        return inputs, targets
