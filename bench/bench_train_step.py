"""Training-step throughput: codegpt's GPT against the transformers class it exports to
(GPT2LMHeadModel for GPT-3's architecture, LlamaForCausalLM for the llama-* presets), same
shape.

Both models get the same batch, the same AdamW settings and a full step (forward, backward,
clip, optimizer step), measured in one process, alternating rounds so machine noise hits both.

    python -m bench.bench_train_step                          # CPU, GPT-3 125M shape
    python -m bench.bench_train_step --size llama-125m        # against LlamaForCausalLM
    python -m bench.bench_train_step --against nanogpt --size small --vocab 8192 \
        --seq-len 256 --batch 8                               # GPT-3 preset vs nanoGPT, 23M
    python -m bench.bench_train_step --device cuda --size gpt3-350m --batch 8 --seq-len 2048 \
        --dtype bf16 --compile                                # GPU, with MFU

Prints a table and writes runs/bench/bench_train_step.json (or --out).
"""

from __future__ import annotations

import statistics
import time
from datetime import date

import torch

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.config import CONFIG_ROOT, from_dict, read_yaml
from codegpt.export import hf_architecture, hf_config
from codegpt.model import GPT, ModelConfig
from codegpt.train.flops import flops_per_token, peak_flops
from codegpt.train.optim import build_optimizer

NAME = "bench_train_step"


def build_ours(cfg: ModelConfig, device, fused: bool):
    model = GPT(cfg).to(device)
    opt = build_optimizer(model, 3e-4, (0.9, 0.95), 1e-8, 0.1, fused=fused)

    def loss_fn(x, y):
        return model(x, y)[1]

    return model, opt, loss_fn


def build_hf(cfg: ModelConfig, device, fused: bool):
    """The transformers model ``codegpt export`` would write for ``cfg`` (GPT-2 or Llama),
    untrained, with SDPA attention and AdamW over the same grouping as ours."""
    from transformers import AutoModelForCausalLM

    fused_kw = {"fused": True} if fused else {}
    hf_cfg = hf_config(cfg)
    hf_cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(hf_cfg).to(device)
    # the codeparrot training script's grouping: no decay on biases and norm gains
    groups = [
        {"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **fused_kw)

    def loss_fn(x, y):
        # labels are shifted inside the model: pass the full window
        return model(input_ids=x, labels=y).loss

    return model, opt, loss_fn


def make_step(model, opt, loss_fn, dtype, device):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(x, y):
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batch, n: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(*batch)
    sync(device)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--size", default="gpt3-125m", help="a name in configs/model/")
    ap.add_argument("--against", choices=("transformers", "nanogpt"), default="transformers",
                    help="the reference: the transformers class the model exports to, or "
                         "nanoGPT's model and optimizer (bench/nanogpt_ref.py)")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16"],
                    help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--no-fused", dest="fused", action="store_false",
                    help="foreach instead of fused AdamW (both models)")
    ap.add_argument("--rounds", type=int, default=8,
                    help="alternating rounds; the ratio is the median of per-round ratios")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    raw = read_yaml(CONFIG_ROOT / "model" / f"{args.size}.yaml")
    cfg = from_dict(ModelConfig, {**raw, "vocab_size": args.vocab,
                                  "block_size": max(args.seq_len, raw["block_size"])})
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=device)
    ours_batch = (x[:, :-1], x[:, 1:])
    hf_batch = (x[:, :-1], x[:, :-1])  # HF shifts labels itself: same tokens, same loss

    if args.against == "nanogpt":
        from bench import nanogpt_ref

        reference = nanogpt_ref.build(cfg, device)
        ref_batch = ours_batch
    else:
        reference, ref_batch = build_hf(cfg, device, args.fused), hf_batch
    runners = {}
    for name, (model, opt, loss_fn), batch in (
        ("codegpt", build_ours(cfg, device, args.fused), ours_batch),
        (args.against, reference, ref_batch),
    ):
        if args.compile:
            loss_fn = torch.compile(loss_fn)
        step = make_step(model, opt, loss_fn, dtype, device)
        for _ in range(args.warmup):
            step(*batch)
        n_params = sum(p.numel() for p in model.parameters())
        runners[name] = (step, batch, n_params)

    times = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, (step, batch, _) in runners.items():
            times[name].append(time_steps(step, batch, args.steps, device))

    tokens = args.batch * args.seq_len
    fpt = flops_per_token(cfg, args.seq_len)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    peak = peak_flops(device_name) if device.type == "cuda" else None
    results = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        results[name] = {
            "step_s_median": t,
            "step_s_min": min(ts),
            "step_s_all": ts,
            "tokens_per_s": tokens / t,
            "params": runners[name][2],
            "mfu": tokens / t * fpt / peak if peak else None,
        }
    # this machine is noisy (shared cores): the headline is the median of per-round ratios,
    # each round timing both models back to back
    per_round = [h / o for o, h in zip(times["codegpt"], times[args.against])]
    ratio = statistics.median(per_round)
    report = {
        "benchmark": "train_step",
        "date": date.today().isoformat(),
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reference": "nanoGPT" if args.against == "nanogpt" else hf_architecture(cfg),
        "shape": {"size": args.size, "n_layer": cfg.n_layer, "d_model": cfg.d_model,
                  "n_head": cfg.n_head, "vocab": args.vocab, "seq_len": args.seq_len,
                  "batch": args.batch},
        "dtype": dtype, "compile": args.compile, "fused_adamw": args.fused,
        "flops_per_token": fpt,
        "results": results,
        f"speedup_vs_{args.against}": ratio,
        "speedup_per_round": per_round,
        "speedup_of_fastest_steps": min(times[args.against]) / min(times["codegpt"]),
        "command": command_line(NAME),
    }
    import transformers

    report["transformers"] = transformers.__version__
    print(f"device {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{dtype}{', compiled' if args.compile else ''}")
    print(f"shape {args.size}: {cfg.n_layer}L d={cfg.d_model} h={cfg.n_head} "
          f"vocab={args.vocab} batch={args.batch}x{args.seq_len}")
    for name, r in results.items():
        m = f"  MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(f"  {name:13s} {r['tokens_per_s']:12,.0f} tok/s  {r['step_s_median'] * 1e3:8.1f} ms/step"
              f"  ({r['params'] / 1e6:.1f}M params){m}")
    print(f"  speedup codegpt / {args.against}: {ratio:.2f}x (median of {len(per_round)} rounds; "
          f"range {min(per_round):.2f}-{max(per_round):.2f}; fastest steps "
          f"{report['speedup_of_fastest_steps']:.2f}x)")
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
