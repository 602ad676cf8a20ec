"""Stage 3: training.

Reads token shards (``codegpt.tokenizer.shards``), or for Codex-S fine-tuning
(``data.format: sft``) the (prompt, completion) pairs of ``codegpt sft-data`` (``sft.py``), and
a training config (``config.py``).
Writes a run folder: the resolved ``config.yaml``, ``metrics.jsonl``, ``status.json``,
``loss.png`` and ``checkpoints/step_NNNNNNN/`` (weights, optimizer, scheduler, data position,
per-rank RNG, manifest). ``trainer.py`` is the loop; it composes the pieces beside it:
``batches.py`` (distributed batches), ``optim.py`` and ``schedule.py``, ``checkpoint.py``
(atomic, verified checkpoints, and loading a checkpoint's model for the later stages),
``metrics.py`` and ``flops.py`` (MFU), ``plot.py``.
"""
