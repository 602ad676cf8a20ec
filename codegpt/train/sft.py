"""Codex-S training examples: (prompt, completion) pairs as sequences whose loss is the completion.

``codegpt sft-data`` writes the pairs (``train.jsonl``, ``val.jsonl``: rows with ``prompt`` and
``completion``; ``codegpt.pairs`` owns the format and its row parser). Training reads them
with the pretrained model's tokenizer:

* **One text.** Prompt + completion are tokenized together, as pretraining saw such a file, so
  the boundary gets the tokens the model knows (our split joins the prompt's last line break to
  the body's indentation: one token straddles the boundary). The first token that holds a
  completion character (``codegpt.tokenizer.offsets.first_scored_token``), every token after it
  and an appended ``<|endoftext|>`` are the loss tokens; the model learns to stop there too.
  The text is encoded as plain text, as the token shards were: a literal ``<|endoftext|>`` in
  a pair is text, never the special id.
* **One example per sequence.** Each sequence is one example, padded to ``seq_len``
  (``data.seq_len``, by default the model's context; a long-context model is best fine-tuned
  at a length near its pairs', so that its compute goes to them, not to padding): the inputs
  with ``<|endoftext|>`` (after the real tokens, so causal attention never lets them touch the
  real ones), the targets of the prompt and of the padding with ``IGNORE_INDEX``. No packing:
  packed examples would attend to each other unless the attention were masked per example.
* **Too long.** An example of more than ``seq_len + 1`` tokens does not fit one sequence and is
  dropped; ``dropped`` counts them (the trainer logs it). Every example is trained on whole:
  its prompt as it would be asked, its completion up to the end of text. (At the CPU demo's
  256-token context that drops 28% of the demo's train pairs; sft-data's ``max_chars`` bounds
  how long a pair can be.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from codegpt.errors import DataError
from codegpt.outputs import require_complete
from codegpt.pairs import read_pairs
from codegpt.tokenizer.bpe import EOT, load_tokenizer, tokenizer_hash
from codegpt.tokenizer.offsets import first_scored_token
from codegpt.train.batches import IGNORE_INDEX, TrainData


class SftExamples:
    """Tokenized pairs of one split: example i is ``ids[starts[i]:starts[i + 1]]`` (prompt +
    completion + eot, at most seq_len + 1 tokens), its loss tokens from ``first_loss[i]`` on."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray, first_loss: np.ndarray, seq_len: int,
                 eot_id: int, dropped: int = 0):
        self.ids, self.starts, self.first_loss = ids, starts, first_loss
        self.seq_len, self.eot_id, self.dropped = seq_len, eot_id, dropped

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]], tokenizer, seq_len: int,
                   eot_id: int) -> "SftExamples":
        """Encode (prompt, completion) pairs with ``tokenizer`` (a ``tokenizers.Tokenizer``
        that encodes special tokens' strings as text, as the token shards do:
        ``codegpt.tokenizer.bpe.load_tokenizer``)."""
        encodings = tokenizer.encode_batch([p + c for p, c in pairs], add_special_tokens=False)
        chunks, starts, firsts, dropped = [], [0], [], 0
        for (prompt, _), enc in zip(pairs, encodings):
            ids = enc.ids + [eot_id]
            if not 2 <= len(ids) <= seq_len + 1:  # too long (or an empty pair: nothing to learn)
                dropped += 1
                continue
            chunks.append(np.asarray(ids, dtype=np.int64))
            starts.append(starts[-1] + len(ids))
            firsts.append(first_scored_token(enc.offsets, len(prompt)))
        ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return cls(ids, np.asarray(starts, dtype=np.int64), np.asarray(firsts, dtype=np.int64),
                   seq_len, eot_id, dropped)

    def __len__(self) -> int:
        return len(self.first_loss)

    def example(self, i: int) -> tuple[np.ndarray, int]:
        """Example i's tokens and the index of its first loss token."""
        return self.ids[self.starts[i]: self.starts[i + 1]], int(self.first_loss[i])

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of [len(indices), seq_len]: target j is token j + 1 where that is
        a loss token, else IGNORE_INDEX; inputs past the example are eot."""
        inputs = np.full((len(indices), self.seq_len), self.eot_id, dtype=np.int64)
        targets = np.full((len(indices), self.seq_len), IGNORE_INDEX, dtype=np.int64)
        for row, i in enumerate(indices):
            tokens, first = self.example(int(i))
            n = len(tokens) - 1
            inputs[row, :n] = tokens[:-1]
            start = max(first, 1) - 1  # the position that predicts the first loss token
            targets[row, start:n] = tokens[start + 1:]
        return inputs, targets


def open_sft_data(data_dir: str, tokenizer: str, seq_len: int, with_val: bool) -> TrainData:
    """The pairs of ``codegpt sft-data``'s out_dir, tokenized with ``tokenizer``."""
    require_complete(data_dir, "sft-data")
    tok = load_tokenizer(tokenizer)  # special tokens' strings are text, as in the token shards
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise DataError(f"the tokenizer {tokenizer} has no {EOT} token to end the completions with")
    splits = {}
    for split in ("train", "val") if with_val else ("train",):
        examples = SftExamples.from_pairs(read_pairs(data_dir, split), tok,
                                          seq_len, eot)
        if not len(examples):
            raise DataError(f"no {split} pairs of at most {seq_len + 1} tokens in {data_dir} "
                            f"({examples.dropped} longer ones dropped)"
                            + ("; set data.val_every=0 to train without validation"
                               if split == "val" else ""))
        splits[split] = examples
    return TrainData(splits["train"], splits.get("val"), tok.get_vocab_size(),
                     tokenizer_hash(tokenizer))
