"""The ``codegpt`` command: one entry point, a subcommand per stage."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_BAD_INPUT = 2


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def cmd_train(args: argparse.Namespace) -> int:
    from codegpt.train.checkpoint import CheckpointError
    from codegpt.config import ConfigError
    from codegpt.train.batches import BatchConfigError
    from codegpt.tokenizer.shards import ShardError
    from codegpt.tokenizer.bpe import TokenizerError
    from codegpt.train.config import load_train_config
    from codegpt.train.trainer import (NONFINITE_EXIT_CODE, PREEMPTED_EXIT_CODE, NonFiniteLossError,
                                 train)

    try:
        cfg = load_train_config(args.config, args.overrides)
        result = train(cfg)
    except (ConfigError, ShardError, CheckpointError, BatchConfigError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return NONFINITE_EXIT_CODE
    if result.status == "preempted":
        return PREEMPTED_EXIT_CODE
    print(f"finished at step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0


def cmd_prep(args: argparse.Namespace) -> int:
    from codegpt.config import ConfigError
    from data_prep.config import load_prep_config
    from data_prep.pipeline import run_prep

    try:
        cfg = load_prep_config(args.config, args.overrides)
        stats = run_prep(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if stats is None:
        print(f"submitted; run `codegpt prep {args.config} ...` again when the jobs finish")
        return 0
    print_funnel(stats)
    print(f"wrote {cfg.output.dir}/data/*.parquet and {cfg.output.dir}/stats.json")
    return 0


def print_funnel(stats: dict) -> None:
    inp = stats["inputs"]
    print(f"inputs   {inp['files']:>8,} files {inp['bytes'] / 1e6:>10.1f} MB")
    for stage, reasons in stats["rejected"].items():
        for reason, v in reasons.items():
            print(f"  - {stage}/{reason:<24s} {v['files']:>7,} files {v['bytes'] / 1e6:>9.1f} MB")
    kept = stats["kept"]
    print(f"kept     {kept['files']:>8,} files {kept['bytes'] / 1e6:>10.1f} MB")


def cmd_show_config(args: argparse.Namespace) -> int:
    import yaml

    from codegpt.config import ConfigError, to_dict
    from codegpt.train.config import load_train_config

    try:
        cfg = to_dict(load_train_config(args.config, args.overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.get:
        node = cfg
        for part in args.get.split("."):
            if not isinstance(node, dict) or part not in node:
                print(f"error: no config key '{args.get}'", file=sys.stderr)
                return EXIT_BAD_INPUT
            node = node[part]
        print(node)
    else:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0


def cmd_shards_bytes(args: argparse.Namespace) -> int:
    from codegpt.tokenizer.shards import ShardError, parquet_documents, write_byte_shards

    try:
        docs = parquet_documents(args.parquet) if args.parquet else None
        meta = write_byte_shards(args.out, docs, max_mb=args.max_mb, seed=args.seed)
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']} files, {info['tokens']:,} tokens")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from codegpt.train.plot import plot_run

    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from codegpt.config import add_config_arguments

    p = argparse.ArgumentParser(prog="codegpt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (same as `accelerate launch train.py ...`)")
    add_config_arguments(t, "train")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("prep", help="data prep: sources -> filters -> dedup -> decontam -> parquet")
    add_config_arguments(pr, "data")
    pr.set_defaults(func=cmd_prep)

    from codegpt.tokenizer.bpe import add_parser as add_tokenizer_parser

    add_tokenizer_parser(sub)  # codegpt tokenizer CONFIG [field=value ...]
    from codegpt.tokenizer.encode import add_parser as add_tokenize_parser

    add_tokenize_parser(sub)  # codegpt tokenize CONFIG [field=value ...]
    from codegpt.eval.generate import add_parser as add_sample_parser

    add_sample_parser(sub)  # codegpt sample --checkpoint DIR --tokenizer DIR --prompt TEXT
    from codegpt.export import add_parser as add_export_parser

    add_export_parser(sub)  # codegpt export --checkpoint DIR --tokenizer DIR --out DIR
    from codegpt.eval.humaneval import add_parser as add_eval_parser

    add_eval_parser(sub)  # codegpt eval humaneval (--samples FILE | --checkpoint DIR --tokenizer DIR)

    c = sub.add_parser("show-config", help="print a training config resolved with overrides")
    add_config_arguments(c, "train")
    c.add_argument("--get", default=None, help="print one dotted key, e.g. run.dir")
    c.set_defaults(func=cmd_show_config)

    s = sub.add_parser("shards-bytes",
                       help="byte-level token shards (demo data until the BPE tokenizer lands)")
    s.add_argument("--out", required=True)
    s.add_argument("--parquet", default=None,
                   help="data prep's parquet folder (default: the standard library's files)")
    s.add_argument("--max-mb", type=float, default=8.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_shards_bytes)

    pl = sub.add_parser("plot", help="plot a run's loss curves to PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
