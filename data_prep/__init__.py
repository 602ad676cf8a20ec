"""Stage 1: data prep.

Reads raw Python sources (``sources/``: local folders, git clones, GitHub search, Hugging
Face datasets). Writes, in ``out_dir``, the kept documents as parquet shards (``data/``, in the
schema of ``codegpt.documents``), ``stats.json`` (every input kept or rejected, with stage and
reason), ``rejected/`` samples and datatrove's ``logs/``. ``pipeline.py`` runs the filters,
decontamination and dedup as datatrove blocks; ``config.py`` is its config.
"""
