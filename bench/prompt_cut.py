"""What cutting HumanEval prompts costs a model: the canonical solutions' bits per byte when each
prompt is kept to its last K tokens, against the whole prompt.

A model with a short context sees a long prompt's end only: with a 256-token context and 128 new
tokens, sampling keeps each prompt's last 128 tokens (``codegpt.eval.generate.encode_prompts``;
results.json's ``prompts_cut`` counts them). This measures what that loses, on a model whose
context holds every prompt whole (``model.block_size`` of at least the longest prompt and its
solution: 1,024 with the reference run's 2,048-id tokenizer): the same solutions scored after
the whole prompt and after its last K tokens, cut at a token boundary. If the figures agree,
the model does not use what the cut removes. Reported over all problems and over those the cut
shortens.

    python -m bench.prompt_cut --checkpoint RUN --tokenizer TOKENIZER --keep 384 256 128

Prints a table and writes runs/bench/prompt_cut.json (or --out).
"""

from __future__ import annotations

from datetime import date

import torch

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.checkpoint import load_checkpoint_and_tokenizer
from codegpt.eval.humaneval import first_problems
from codegpt.eval.likelihood import Likelihood, solution_likelihood

NAME = "prompt_cut"


def last_tokens(tokenizer, prompt: str, keep: int) -> str:
    """``prompt`` from the start of its last ``keep`` tokens (the whole of a shorter one)."""
    enc = tokenizer.encode(prompt, add_special_tokens=False)
    return prompt if len(enc.ids) <= keep else prompt[enc.offsets[len(enc.ids) - keep][0]:]


def total(per: list[Likelihood]) -> Likelihood:
    return Likelihood(tokens=sum(x.tokens for x in per), bytes=sum(x.bytes for x in per),
                      nats=sum(x.nats for x in per))


def cut_costs(model, tokenizer, problems: dict[str, dict], keeps: list[int]) -> dict:
    """Per K: canonical bits/byte over all problems and over those cut, whole and cut."""
    longest = max(len(tokenizer.encode(p["prompt"] + p["canonical_solution"],
                                       add_special_tokens=False).ids) for p in problems.values())
    if longest > model.config.block_size:
        raise SystemExit(f"the model's context ({model.config.block_size} tokens) does not hold "
                         f"the longest prompt and solution ({longest} tokens): measure a model "
                         f"whose context does, or the whole prompt is cut too")
    whole = {t: solution_likelihood(model, tokenizer, p["prompt"], p["canonical_solution"])
             for t, p in problems.items()}
    rows = []
    for keep in keeps:
        cut = {}
        for t, p in problems.items():
            short = last_tokens(tokenizer, p["prompt"], keep)
            if short != p["prompt"]:
                cut[t] = solution_likelihood(model, tokenizer, short, p["canonical_solution"])
        rest = [whole[t] for t in problems if t not in cut]
        rows.append({
            "keep_tokens": keep, "prompts_cut": len(cut),
            "bits_per_byte_whole": total(list(whole.values())).bits_per_byte,
            "bits_per_byte_cut": total(rest + list(cut.values())).bits_per_byte,
            "cut_problems_bits_per_byte_whole": total([whole[t] for t in cut]).bits_per_byte,
            "cut_problems_bits_per_byte_cut": total(list(cut.values())).bits_per_byte,
        })
    return {"problems": len(problems), "longest_tokens": longest, "rows": rows}


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint or a run folder")
    ap.add_argument("--tokenizer", required=True, help="the tokenizer folder it trained with")
    ap.add_argument("--keep", type=int, nargs="+", default=[384, 256, 128],
                    help="prompt lengths in tokens to compare with the whole prompt")
    ap.add_argument("--limit", type=int, default=0, help="the first N problems (0: all)")
    args = ap.parse_args()
    loaded = load_checkpoint_and_tokenizer(args.checkpoint, args.tokenizer, device="cpu")
    with torch.no_grad():
        figures = cut_costs(loaded.model.eval(), loaded.tokenizer, first_problems(args.limit),
                            args.keep)
    report = {"benchmark": NAME, "command": command_line(NAME), "date": date.today().isoformat(),
              "cpu": cpu_name(), **loaded.record(args.checkpoint),
              "block_size": loaded.model.config.block_size, **figures}
    print(f"{figures['problems']} problems; the model's context {report['block_size']} tokens")
    print(f"{'keep':>6s} {'cut':>5s} {'all: whole':>11s} {'cut':>7s} {'the cut ones: whole':>20s} "
          f"{'cut':>7s}")
    for r in figures["rows"]:
        print(f"{r['keep_tokens']:6d} {r['prompts_cut']:5d} {r['bits_per_byte_whole']:11.4f} "
              f"{r['bits_per_byte_cut']:7.4f} {r['cut_problems_bits_per_byte_whole']:20.4f} "
              f"{r['cut_problems_bits_per_byte_cut']:7.4f}")
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
