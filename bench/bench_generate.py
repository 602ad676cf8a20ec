"""Sampling throughput: codegpt's generate against transformers' generate on the exported model.

A checkpoint (random weights of the given shape by default, or --checkpoint from training) is
exported with ``codegpt export`` and loaded back with ``AutoModelForCausalLM.from_pretrained``;
both then sample exactly --new-tokens tokens per sequence (no stop strings, end-of-text ignored)
from the same HumanEval prompt (the problem of median prompt length), with the same batch size,
temperature and top-p, in the same dtype. Two workloads:

- ``samples``: a batch of n samples of one prompt, as pass@k sampling draws them (HF:
  ``input_ids`` repeated, which is what ``num_return_sequences`` does);
- ``distinct``: one sample of each of B different prompts cut to the same token length;
- ``mixed``: one sample of each of B consecutive HumanEval prompts (by length, from the median
  up) at their own lengths, as a greedy or n=1 run batches problems (HF: left-padded with an
  attention mask, as its docs advise for decoder-only models).

Rounds alternate between the two libraries; the ratio is the median of per-round ratios.

    python -m bench.bench_generate                                  # CPU, float32 + bfloat16
    python -m bench.bench_generate --device cuda --dtypes bfloat16 --batch-sizes 1,16,64,200

Prints a table, writes runs/bench/bench_generate.json and runs/bench/bench_generate.png (or
--out and the same path with .png).
"""

from __future__ import annotations

import statistics
import sysconfig
import tempfile
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.checkpoint import DTYPES, load_checkpoint_model
from codegpt.config import CONFIG_ROOT, from_dict, read_yaml, yaml_text
from codegpt.eval.generate import generate
from codegpt.export import export_hf
from codegpt.model import GPT, ModelConfig
from codegpt.problems import load_problems
from codegpt.tokenizer.bpe import EOT, TokenizerConfig, load_tokenizer, train_tokenizer
from codegpt.train import checkpoint as ckpt
from codegpt.train.config import TrainConfig

NAME = "bench_generate"


def train_bench_tokenizer(root: Path, vocab: int) -> Path:
    """A BPE tokenizer trained on the interpreter's standard library (no data prep needed)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    docs = [{"id": str(i), "repo_name": f"stdlib/{f.stem}", "text": f.read_text(errors="replace")}
            for i, f in enumerate(files)]
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(docs), root / "data" / "00000.parquet")
    cfg = TokenizerConfig(data_dir=str(root / "data"), out_dir=str(root / "tokenizer"),
                          vocab_size=vocab, sample_mb=16)
    return train_tokenizer(cfg).parent


def random_checkpoint(root: Path, size: str, vocab: int) -> Path:
    """A random model of configs/model/<size>.yaml saved as training saves checkpoints."""
    raw = read_yaml(CONFIG_ROOT / "model" / f"{size}.yaml")
    cfg = TrainConfig(model=from_dict(ModelConfig, {**raw, "vocab_size": vocab}))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    return ckpt.save_checkpoint(
        root, 1, model_state=model.state_dict(), optim_state={"state": {}, "param_groups": []},
        sched_state={}, trainer_state={"step": 1, "data": {}, "tokens_seen": 0, "world_size": 1},
        config_yaml=yaml_text(cfg), rank=0,
        barrier=lambda: None, keep_last=1)


def humaneval_prompts(tok) -> list[list[int]]:
    """HumanEval's prompts as token ids, in order of length."""
    problems = load_problems()
    return sorted((tok.encode(p["prompt"], add_special_tokens=False).ids for p in problems.values()),
                  key=len)


def same_length_prompts(tok, prompts: list[list[int]], count: int, length: int) -> list[str]:
    """``count`` different prompts of exactly ``length`` tokens: heads of HumanEval prompts
    whose text encodes back to the same ids (so both libraries see identical inputs)."""
    out = []
    for ids in prompts:
        if len(ids) < length:
            continue
        text = tok.decode(ids[:length])
        if tok.encode(text, add_special_tokens=False).ids == ids[:length]:
            out.append(text)
        if len(out) == count:
            return out
    raise SystemExit(f"only {len(out)} HumanEval prompts have {length}-token heads that "
                     f"round-trip; use a smaller batch for the distinct workload")


def left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask for transformers, prompts padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def time_hf(hf, input_ids: torch.Tensor, new_tokens: int, temperature: float, top_p: float,
            eot_id: int, attention_mask: torch.Tensor | None = None) -> float:
    """Seconds for transformers' generate to sample exactly ``new_tokens`` per row."""
    kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
              max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=eot_id,
              attention_mask=torch.ones_like(input_ids) if attention_mask is None
              else attention_mask)
    dev = input_ids.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(input_ids, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    assert out.shape == (input_ids.shape[0], input_ids.shape[1] + new_tokens), out.shape
    return seconds


def time_generation(model: GPT, tokenizer, prompt: str | list[str], batch_size: int = 8,
                    new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                    repeats: int = 1, device=None) -> dict:
    """codegpt's decode throughput, timed after one warm-up call: ``batch_size`` samples of
    ``prompt`` (as pass@k sampling draws n samples of a problem), or one sample of each prompt
    in a list of ``batch_size`` prompts. Exactly ``new_tokens`` each (no stop strings,
    <|endoftext|> ignored, no token healing: the decoding loop alone, as transformers runs it).
    Returns the best of ``repeats``: tokens, seconds and tokens/s."""
    prompts, n = ([prompt], batch_size) if isinstance(prompt, str) else (list(prompt), 1)
    if len(prompts) * n != batch_size:
        raise ValueError(f"{len(prompts)} prompts do not make a batch of {batch_size}")
    kw = dict(n=n, max_new_tokens=new_tokens, temperature=temperature, top_p=top_p,
              stop=(), batch_size=batch_size, device=device, ignore_eot=True, heal=False)
    generate(model, tokenizer, prompts, **{**kw, "max_new_tokens": 2})  # warm-up
    dev = torch.device(device) if device is not None else model.wte.weight.device
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        out = generate(model, tokenizer, prompts, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for cs in out for c in cs)
    return {"batch_size": batch_size, "new_tokens": new_tokens, "tokens": tokens,
            "seconds": best, "tokens_per_s": tokens / best}


def plot(report: dict, path: Path) -> None:
    import matplotlib  # heavy, and only needed for the figure: imported on use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["workload"] == "samples"]
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 4), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        sel = [r for r in rows if r["dtype"] == dt]
        bs = [r["batch_size"] for r in sel]
        ax.plot(bs, [r["codegpt_tokens_per_s"] for r in sel], "o-", label="codegpt")
        ax.plot(bs, [r["transformers_tokens_per_s"] for r in sel], "s--", label="transformers")
        for r in sel:
            ax.annotate(f"{r['speedup']:.2f}x", (r["batch_size"], r["codegpt_tokens_per_s"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples of one prompt (batch)")
        ax.set_ylabel("new tokens / s")
        ax.set_title(f"{report['shape']['size']}, {dt}, {report['device']}", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--size", default="small", help="a name in configs/model/ (random weights)")
    ap.add_argument("--checkpoint", help="a trained checkpoint instead (needs --tokenizer)")
    ap.add_argument("--tokenizer", help="its tokenizer folder (default: train one on the stdlib)")
    ap.add_argument("--vocab", type=int, default=8192, help="vocabulary of the trained tokenizer")
    ap.add_argument("--batch-sizes", default="1,8,50",
                    help="50: the batch `codegpt eval humaneval` samples in by default")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--workloads", default="samples,distinct,mixed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.checkpoint and not args.tokenizer:
        ap.error("--checkpoint needs --tokenizer")
    import transformers  # heavy (a dev dependency): imported after the arguments are checked

    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d}: use {', '.join(DTYPES)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    tok_dir = Path(args.tokenizer) if args.tokenizer else train_bench_tokenizer(tmp / "tok", args.vocab)
    tok = load_tokenizer(tok_dir)
    folder = (Path(args.checkpoint) if args.checkpoint
              else random_checkpoint(tmp / "ckpt", args.size, tok.get_vocab_size()))
    hf_dir = export_hf(folder, tok_dir, tmp / "hf")
    eot_id = tok.token_to_id(EOT)

    prompts = humaneval_prompts(tok)
    median = prompts[len(prompts) // 2]
    prompt_text = tok.decode(median)
    assert tok.encode(prompt_text, add_special_tokens=False).ids == median

    results = []
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device_name}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads")
    for dtype in dtypes:
        ours, cfg = load_checkpoint_model(folder, device, dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, local_files_only=True, dtype=DTYPES[dtype]).to(device).eval()
        if len(median) + args.new_tokens > cfg.block_size:
            raise SystemExit(f"prompt ({len(median)} tokens) + --new-tokens {args.new_tokens} "
                             f"exceed the model's block_size {cfg.block_size}")
        params = ours.num_params()
        print(f"{dtype}: {cfg.n_layer}L d={cfg.d_model} h={cfg.n_head} vocab={cfg.vocab_size} "
              f"({params / 1e6:.1f}M params), prompt {len(median)} tokens, "
              f"{args.new_tokens} new, T={args.temperature} top-p={args.top_p}")
        for workload in args.workloads.split(","):
            for B in batch_sizes:
                mask = None
                if workload in ("distinct", "mixed"):
                    if B == 1:
                        continue  # the same as one sample of one prompt
                    if workload == "distinct":
                        texts = same_length_prompts(tok, prompts, B, len(median))
                    else:
                        texts = [tok.decode(p) for p in prompts[len(prompts) // 2:][:B]]
                    ours_prompt: str | list[str] = texts
                    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
                    input_ids, mask = left_padded(ids, eot_id, device)
                else:
                    ours_prompt, ids = prompt_text, [median] * B
                    input_ids = torch.tensor(ids, device=device)
                if max(map(len, ids)) + args.new_tokens > cfg.block_size:
                    raise SystemExit(f"prompts of up to {max(map(len, ids))} tokens + "
                                     f"{args.new_tokens} new exceed block_size {cfg.block_size}")
                kw = dict(temperature=args.temperature, top_p=args.top_p)
                time_hf(hf, input_ids, 2, eot_id=eot_id, attention_mask=mask, **kw)  # warm-up
                t_ours, t_hf = [], []
                for _ in range(args.rounds):
                    r = time_generation(ours, tok, ours_prompt, batch_size=B,
                                        new_tokens=args.new_tokens, device=device, **kw)
                    assert r["tokens"] == B * args.new_tokens, r
                    t_ours.append(r["seconds"])
                    t_hf.append(time_hf(hf, input_ids, args.new_tokens, eot_id=eot_id,
                                        attention_mask=mask, **kw))
                tokens = B * args.new_tokens
                ratio = statistics.median(h / o for o, h in zip(t_ours, t_hf))
                row = {"dtype": dtype, "workload": workload, "batch_size": B,
                       "codegpt_tokens_per_s": tokens / statistics.median(t_ours),
                       "transformers_tokens_per_s": tokens / statistics.median(t_hf),
                       "speedup": ratio, "codegpt_s": t_ours, "transformers_s": t_hf}
                results.append(row)
                print(f"  {workload:8s} batch {B:4d}: codegpt {row['codegpt_tokens_per_s']:9,.0f} "
                      f"tok/s  transformers {row['transformers_tokens_per_s']:9,.0f} tok/s  "
                      f"{ratio:.2f}x")
        del ours, hf

    report = {
        "benchmark": "generate", "date": date.today().isoformat(), "device": device_name,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "shape": {"size": "checkpoint" if args.checkpoint else args.size, "n_layer": cfg.n_layer,
                  "d_model": cfg.d_model, "n_head": cfg.n_head, "vocab": cfg.vocab_size,
                  "params": params},
        "prompt_tokens": len(median), "new_tokens": args.new_tokens,
        "temperature": args.temperature, "top_p": args.top_p, "rounds": args.rounds,
        "results": results, "command": command_line(NAME),
    }
    out = write_report(report, args.out)
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
