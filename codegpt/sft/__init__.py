"""Codex-S: supervised fine-tuning on standalone functions.

``codegpt sft-data`` (``codegpt.sft.data``) reads data prep's documents (``data_dir``: the parquet
shards of ``codegpt prep``, through ``codegpt.documents``) and, optionally, a user's JSONL files
of problems in human-eval / MBPP style (``extra_jsonl``), and writes to ``out_dir``:

- ``train.jsonl`` and ``val.jsonl``: (prompt, completion) pairs in HumanEval's layout, with
  ``test`` and ``entry_point`` where the pair is tested, and ``source``, ``id``, ``repo_name``,
  ``path``; split by repository with ``codegpt.documents.split_repositories``;
- ``stats.json``: the funnel (candidates, kept, tested, untested, rejected by reason);
- ``rejected/REASON.jsonl``: a few rejected candidates per reason, to inspect;
- ``config.yaml``: the resolved config.
"""
