"""Token healing: prompts that end where training never had a token boundary.

BPE merges never cross the split pattern's pieces, and our pattern joins a line break with the
next line's indentation: in training, a docstring's closing quotes and line break inside a
function are always followed by the body's indentation within the same token (quotes, line
break and four spaces: one token). A HumanEval prompt ends right after the closing quotes and
line break, so its last token is one the model has only seen before column 0, where a module
docstring ends. Encoded as is, the prompt asks the model to continue from a boundary it never
saw, and it writes top-level code.

Healing backs off the prompt's last piece (the tokens of the last split-pattern piece, which no
merge could have joined to what follows) and makes the first generated tokens reproduce its
text: each step, only tokens whose bytes start with the text still to reproduce, or are a
prefix of it, may be picked. The model then picks the tokenization it knows (the quotes, line
break and indentation as one token), and the completion is what follows the healed text.
"""

from __future__ import annotations

import torch

from codegpt.tokenizer.bpe import byte_decoder


def split_last_piece(tokenizer, prompt: str) -> tuple[str, str]:
    """(head, tail): ``tail`` is the prompt's last pre-tokenizer piece, which healing removes
    and the first generated tokens must reproduce; ("", "") for an empty prompt."""
    if not prompt or tokenizer.pre_tokenizer is None:
        return prompt, ""
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(prompt)
    if not pieces:
        return prompt, ""
    start = pieces[-1][1][0]
    return prompt[:start], prompt[start:]


def token_bytes(tokenizer) -> list[bytes | None]:
    """Each id's bytes (None for special tokens, which healing never allows)."""
    to_byte = byte_decoder()
    added = tokenizer.get_added_tokens_decoder()
    out: list[bytes | None] = [None] * tokenizer.get_vocab_size()
    for text, i in tokenizer.get_vocab(with_added_tokens=False).items():
        out[i] = bytes(to_byte[c] for c in text)
    for i, tok in added.items():
        out[i] = None if tok.special else tok.content.encode("utf-8")
    return out


class Healer:
    """Which next tokens keep a row on course to reproduce its healed text."""

    def __init__(self, tokenizer):
        self.bytes = token_bytes(tokenizer)
        self._masks: dict[bytes, torch.Tensor] = {}

    def allowed(self, rest: bytes) -> torch.Tensor:
        """Bool [V]: tokens that start with ``rest`` or are a non-empty prefix of it."""
        if rest not in self._masks:
            self._masks[rest] = torch.tensor(
                [b is not None and len(b) > 0 and (b.startswith(rest) or rest.startswith(b))
                 for b in self.bytes], dtype=torch.bool)
        return self._masks[rest]

    def advance(self, rest: bytes, token: int) -> bytes:
        """What is left to reproduce after ``token`` (b"" once it is all reproduced)."""
        b = self.bytes[token] or b""
        return b"" if b.startswith(rest) else rest[len(b):]

    def constrain(self, logits: torch.Tensor, rests: list[bytes]) -> torch.Tensor:
        """``logits`` [B, V] with -inf where row j's token would leave its healed text."""
        rows = [j for j, rest in enumerate(rests) if rest]
        if not rows:
            return logits
        masks = torch.stack([self.allowed(rests[j]) for j in rows]).to(logits.device)
        out = logits.clone()
        out[rows] = out[rows].masked_fill(~masks[:, : out.shape[-1]], float("-inf"))
        return out

    def healed_tokens(self, ids: list[int], healed: bytes) -> int:
        """How many leading tokens of ``ids`` lie wholly inside the healed text: they are the
        prompt's, not the completion's."""
        used = 0
        for k, token in enumerate(ids):
            used += len(self.bytes[token] or b"")
            if used > len(healed):
                return k
        return len(ids)
