"""The GPU check: everything only a GPU can measure, in one command of at most 8 minutes on one
H100/H200, written to one JSON file.

    python -m bench.gpu_check                    # on the GPU machine
    python -m bench.gpu_check --dry-run          # anywhere: the same steps at toy sizes, on CPU

1. Train-step throughput and MFU with bf16 autocast and ``torch.compile``, at the 125M and 350M
   shapes of GPT-3's architecture (``gpt3-*``) and Llama's (``llama-*``): tokens/s of a full
   step (forward, backward, clipping, fused AdamW) after warm-up, and the model FLOPs
   utilisation against the device's peak.
2. Which attention kernel ``scaled_dot_product_attention`` picked for the model's causal
   attention in bf16 (flash, memory-efficient, cuDNN or math), read from the profiler.
3. A short reference training: the Python files on the machine through data prep, a tokenizer
   and token shards, ``--train-minutes`` (3) of pretraining of the llama-125m preset at a
   1,024-token context with FIM, then the HumanEval canonical-solution bits/byte of the model
   (``codegpt eval humaneval --likelihood-only``).

Each step's figures are in the JSON (``--out``); a step that fails records its error and the
others still run, so one command run gives every figure it can.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from datetime import date
from pathlib import Path

import torch

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.config import CONFIG_ROOT, from_dict, read_yaml
from codegpt.model import GPT, CausalSelfAttention, ModelConfig
from codegpt.train.flops import flops_per_token, peak_flops
from codegpt.train.optim import build_optimizer

NAME = "gpu_check"
SIZES = ("gpt3-125m", "llama-125m", "gpt3-350m", "llama-350m")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_config(size: str, vocab: int, seq_len: int, dry_run: bool) -> ModelConfig:
    raw = {**read_yaml(CONFIG_ROOT / "model" / f"{size}.yaml"), "vocab_size": vocab,
           "block_size": seq_len}
    if dry_run:  # the preset's architecture at a toy shape
        raw.update(n_layer=2, d_model=64, n_head=2)
    return from_dict(ModelConfig, raw, prefix="model.")


def throughput(size: str, args, device: torch.device) -> dict:
    """Tokens/s and MFU of full training steps of the ``size`` preset (bf16 autocast, compiled
    unless --no-compile), the median of ``--steps`` timed steps after ``--warmup``."""
    cfg = model_config(size, args.vocab, args.seq_len, args.dry_run)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = build_optimizer(model, 3e-4, (0.9, 0.95), 1e-8, 0.1, fused=True)
    forward = torch.compile(model) if args.compile else model
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = forward(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = args.batch * args.seq_len
    fpt = flops_per_token(cfg, args.seq_len)
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    out = {"size": size, "params": model.num_params(), "batch": args.batch,
           "seq_len": args.seq_len, "compile": args.compile, "dtype": "bf16",
           "warmup_s": round(warmup_s, 2), "step_s_median": step_s, "step_s_all": times,
           "tokens_per_s": tokens / step_s, "flops_per_token": fpt,
           "mfu": tokens / step_s * fpt / peak if peak else None}
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def attention_kernel(args, device: torch.device) -> dict:
    """The SDPA kernels that ran for one causal attention forward and backward at the 125M
    shape in bf16: the aten operators the profiler saw (``_scaled_dot_product_flash_attention``,
    ``..._efficient_attention``, ``..._cudnn_attention``, or the math fallback's matmuls)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = model_config("gpt3-125m", args.vocab, args.seq_len, args.dry_run)
    attn = CausalSelfAttention(cfg, 0).to(device)
    x = torch.randn(args.batch, args.seq_len, cfg.d_model, device=device, requires_grad=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with torch.autocast(device.type, dtype=torch.bfloat16):
        attn(x).sum().backward()  # warm-up
        with profile(activities=activities) as prof:
            attn(x).sum().backward()
            sync(device)
    ops = sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key})
    kinds = [k for k in ("flash", "efficient", "cudnn") if any(k in op for op in ops)]
    return {"ops": ops, "kernel": kinds[0] if kinds else "math",
            "flash_enabled": torch.backends.cuda.flash_sdp_enabled(),
            "shape": [args.batch, cfg.n_head, args.seq_len, cfg.head_dim]}


def codegpt(*argv: str, log: Path) -> None:
    """Run a codegpt command as a user would; its output goes to ``log``."""
    with open(log, "a") as f:
        f.write(f"$ codegpt {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "codegpt", *argv], stdout=f, stderr=f,
                              env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode != 0:
        raise RuntimeError(f"codegpt {' '.join(argv)} exited with {proc.returncode}; see {log}")


def reference_training(args, work: Path) -> dict:
    """Prep, tokenizer, shards, ``--train-minutes`` of pretraining and the canonical
    likelihood; the wall time of each stage."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    times = {}
    prep = [f"out_dir={work / 'data'}", "dedup.near=false", "decontam.enabled=true"]
    if args.dry_run:  # a small corpus: codegpt's own sources
        prep.append(f"sources=[{{type: local, roots: [{Path(__file__).parents[1] / 'codegpt'}]}}]")
    if args.dry_run:
        model = ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.block_size=128",
                 "batch.global_batch_tokens=1024", "batch.micro_batch_size=8",
                 "run.precision=fp32", "run.compile=false"]
        vocab, sample_mb = 512, 1
    else:
        model = ["model.size=llama-125m", "model.block_size=1024",
                 "batch.global_batch_tokens=262144", "batch.micro_batch_size=32",
                 "run.precision=bf16", "run.compile=true"]
        vocab, sample_mb = 16384, 16
    steps = [
        ("prep", ["prep", str(CONFIG_ROOT / "data" / "default.yaml"), *prep]),
        ("tokenizer", ["tokenizer", str(CONFIG_ROOT / "tokenizer" / "default.yaml"),
                       f"data_dir={work / 'data'}", f"out_dir={work / 'tokenizer'}",
                       f"vocab_size={vocab}", f"sample_mb={sample_mb}"]),
        ("tokens", ["tokenize", str(CONFIG_ROOT / "tokens" / "default.yaml"),
                    f"data_dir={work / 'data'}", f"tokenizer={work / 'tokenizer'}",
                    f"out_dir={work / 'tokens'}", "val_fraction=0.02", "max_mb=256"]),
        ("train", ["train", str(CONFIG_ROOT / "train" / "gpt3-125m.yaml"),
                   f"data_dir={work / 'tokens'}", f"tokenizer={work / 'tokenizer'}",
                   f"out_dir={work / 'train'}", "run.max_steps=100000",
                   f"run.max_minutes={args.train_minutes}", "optim.lr=1.2e-3",
                   "optim.warmup_steps=50", "data.fim_rate=0.5", "data.val_every=100",
                   "data.val_sequences=128", "checkpoint.every=0", "logging.wandb=false",
                   *model]),
        ("likelihood", ["eval", "humaneval", "--likelihood-only",
                        "--checkpoint", str(work / "train"), "--tokenizer",
                        str(work / "tokenizer"), "--out", str(work / "eval")]),
    ]
    for name, argv in steps:
        t = time.perf_counter()
        codegpt(*argv, log=log)
        times[name] = round(time.perf_counter() - t, 1)
    from codegpt.train.metrics import read_metrics

    records = read_metrics(work / "train" / "metrics.jsonl")
    trained = [r for r in records if "loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    results = json.loads((work / "eval" / "results.json").read_text())
    steady = trained[len(trained) // 5:]  # after compilation and warm-up

    def median(key):
        values = [r[key] for r in steady if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"stage_s": times, "steps": trained[-1]["step"] if trained else 0,
            "tokens": trained[-1].get("tokens") if trained else None,
            "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
            "last_val_loss": val[-1] if val else None,
            "canonical_bits_per_byte": results.get("canonical_bits_per_byte"),
            "log": str(log)}


def guarded(name: str, fn, report: dict) -> None:
    """Run one step of the check into report[name]; a failure is recorded, not raised."""
    t = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as e:  # one failed step must not cost the others' figures
        report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    print(f"[{time.perf_counter() - t:6.1f} s] {name}: {json.dumps(report[name])[:600]}",
          flush=True)


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--dry-run", action="store_true",
                    help="toy sizes on the CPU, seconds: checks the steps, measures nothing")
    ap.add_argument("--work", type=Path, default=Path("runs") / "gpu-check",
                    help="where the reference training's data and run go")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--train-minutes", type=float, default=3.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "attention",
                                                              "reference"])
    args = ap.parse_args()
    if args.dry_run:
        args.vocab, args.seq_len, args.batch, args.warmup, args.steps = 512, 64, 2, 1, 2
        args.compile, args.train_minutes = False, min(args.train_minutes, 0.1)
    elif not torch.cuda.is_available():
        ap.error("no CUDA device: run it on a GPU machine, or --dry-run to check its steps")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    report = {"benchmark": NAME, "date": date.today().isoformat(), "dry_run": args.dry_run,
              "device": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "command": command_line(NAME)}
    t0 = time.perf_counter()
    if "throughput" not in args.skip:
        report["throughput"] = {}
        for size in args.sizes:
            guarded(size, lambda: throughput(size, args, device), report["throughput"])
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the last size's model and optimizer are gone
    if "attention" not in args.skip:
        guarded("attention", lambda: attention_kernel(args, device), report)
    if "reference" not in args.skip:
        guarded("reference", lambda: reference_training(args, args.work), report)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {write_report(report, args.out)} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
