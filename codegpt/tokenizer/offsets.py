"""Where text positions fall among tokens: the helpers that map a character boundary (the end of
a prompt) to the tokens of an encoding, by the character offsets the tokenizer reports.

Fine-tuning uses them to put the loss on the completion's tokens, evaluation to score a
solution's likelihood after its prompt: both tokenize prompt + completion as one text, so the
token that straddles the boundary is the one the model knows.
"""

from __future__ import annotations


def first_scored_token(offsets: list[tuple[int, int]], boundary: int) -> int:
    """Index of the first token that holds a character at or after ``boundary`` (character
    offsets as the tokenizer reports them), i.e. the one that straddles the prompt's end or
    starts the solution; len(offsets) if none does."""
    for i, (_, end) in enumerate(offsets):
        if end > boundary:
            return i
    return len(offsets)
