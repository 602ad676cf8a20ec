"""Stage 3: training.

Reads token shards (``codegpt.tokenizer.shards``), or for Codex-S fine-tuning
(``data.format: sft``) the (prompt, completion) pairs of ``codegpt sft-data`` (``sft.py``), and
a training config (``config.py``).
Writes a run folder: the resolved ``config.yaml``, ``metrics.jsonl``, ``status.json``,
``loss.png`` and ``checkpoints/step_NNNNNNN/`` (weights, optimizer, scheduler, data position,
per-rank RNG, manifest). ``trainer.py`` is the loop; it composes the components beside it, each built
from its own config section: ``checkpoint.py`` (``CheckpointManager``: when to save, what to
keep, what to resume; atomic, verified checkpoints, read back through ``codegpt.checkpoint``),
``budget.py`` (``TimeBudget``: ``run.max_minutes``), ``optim.py`` and ``schedule.py``
(``ScheduledOptimizer``: AdamW and the one place the lr is set, from ``optim``), ``setup.py``
(accelerate, precision, FSDP on CPU), ``start.py`` (the data, the vocabulary, ``init_from`` and
resume checks), ``signals.py`` (SIGTERM/SIGUSR1), ``status.py`` (status.json, the progress bar),
``batches.py`` (distributed batches), ``metrics.py`` and ``flops.py`` (MFU), ``plot.py``.
"""
