"""Stage 2: the tokenizer and the token shards.

Reads data prep's documents (parquet shards, through ``codegpt.documents``).
Writes a byte-level BPE (``bpe.py``: ``tokenizer.json``, ``tokenizer_config.json``,
``tokenizer_meta.json``; ``codegpt tokenizer``) and, with it, the token shards training reads
(``encode.py``: ``meta.json`` plus ``train/`` and ``val/`` shards of token ids split by
repository; ``codegpt tokenize``). ``shards.py`` owns the token-shard format for both sides.
"""
