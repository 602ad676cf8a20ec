"""Training throughput with fill-in-the-middle on (data.fim_rate=0.5) against off, same run.

The transform decodes and re-encodes text in the loader, on the training process: this measures
what that costs a whole training step (the loader's batch, forward, backward, clip, AdamW) at
the CPU reference size: 3 layers, d=192, a 2,048-id tokenizer, 256-token windows, 4,096 tokens
per update in micro-batches of 8, bf16 autocast. The two loaders (the same shards, the same
order) alternate round by round, so machine noise hits both; the headline is the median of the
per-round ratios. Goal (issue 20): FIM's tokens/s at least 0.95 of plain training's.

Without --tokens/--tokenizer it makes its own: a 2,048-id tokenizer and shards of the Python
files of the standard library (about a minute).

    python -m bench.bench_fim
    python -m bench.bench_fim --tokens RUN/tokens --tokenizer RUN/tokenizer

Prints a table and writes runs/bench/bench_fim.json (or --out).
"""

from __future__ import annotations

import statistics
import sysconfig
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from bench.common import bench_parser, command_line, cpu_name, write_report
from codegpt.model import GPT, ModelConfig
from codegpt.train.batches import DistributedBatches, TokenWindows
from codegpt.train.fim import Fim, FimWindows, make_codec
from codegpt.train.optim import build_optimizer
from codegpt.tokenizer.shards import SequenceIndex, read_meta

NAME = "bench_fim"


def make_shards(root: Path, vocab: int, mb: float) -> tuple[Path, Path]:
    """A tokenizer and token shards of the standard library's Python files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codegpt.tokenizer.bpe import TokenizerConfig, train_tokenizer
    from codegpt.tokenizer.encode import TokenizeConfig, tokenize

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for i, path in enumerate(sorted(stdlib.rglob("*.py"))):
        if "site-packages" in path.parts or size > mb * 1e6:
            continue
        text = path.read_text(errors="replace")
        docs.append({"id": str(i), "repo_name": path.relative_to(stdlib).parts[0], "text": text})
        size += len(text)
    data = root / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(docs), data / "00000.parquet")
    tok = train_tokenizer(TokenizerConfig(data_dir=str(data), out_dir=str(root / "tok"),
                                          vocab_size=vocab, sample_mb=mb)).parent
    tokenize(TokenizeConfig(data_dir=str(data), tokenizer=str(tok), out_dir=str(root / "tokens"),
                            val_fraction=0.05))
    return root / "tokens", tok


def main() -> None:
    ap = bench_parser(NAME, __doc__)
    ap.add_argument("--tokens", help="token shards (default: made from the standard library)")
    ap.add_argument("--tokenizer", help="the tokenizer that made them")
    ap.add_argument("--fim-rate", type=float, default=0.5)
    ap.add_argument("--spm-rate", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="timed updates per round and loader")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()
    if bool(args.tokens) != bool(args.tokenizer):
        ap.error("give --tokens and --tokenizer together")

    with tempfile.TemporaryDirectory() as tmp:
        tokens, tokenizer = ((Path(args.tokens), Path(args.tokenizer)) if args.tokens
                             else make_shards(Path(tmp), 2048, 12.0))
        meta = read_meta(tokens)
        cfg = ModelConfig(n_layer=3, d_model=192, n_head=3, block_size=256,
                          vocab_size=int(meta["vocab_size"]))
        plain = TokenWindows(SequenceIndex.open(tokens, "train", cfg.block_size))
        loaders = {
            "plain": plain,
            "fim": FimWindows(plain, Fim(args.fim_rate, args.spm_rate), make_codec(tokenizer),
                              seed=0)}
        global_batch = args.batch_tokens // cfg.block_size
        batches = {name: DistributedBatches(data, global_batch, args.micro_batch, 0, 1, seed=0)
                   for name, data in loaders.items()}
        torch.manual_seed(0)
        model = GPT(cfg)
        opt = build_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 0.1, fused=True)

        def update(name: str) -> float:
            """One optimizer update from loader ``name``; the loader's share of its time."""
            t0 = time.perf_counter()
            micro = batches[name].next_step()
            loading = time.perf_counter() - t0
            for x, y in micro:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(x.long(), y.long())[1] / len(micro)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loading

        for name in loaders:  # warm up both
            update(name)
        times: dict[str, list[float]] = {name: [] for name in loaders}
        loading: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name in loaders:
                t0 = time.perf_counter()
                spent = [update(name) for _ in range(args.steps)]
                times[name].append((time.perf_counter() - t0) / args.steps)
                loading[name].append(sum(spent) / args.steps)

    tokens_per_step = global_batch * cfg.block_size
    per_round = [p / f for p, f in zip(times["plain"], times["fim"])]
    ratio = statistics.median(per_round)
    results = {name: {"step_s_median": statistics.median(ts), "step_s_all": ts,
                      "tokens_per_s": tokens_per_step / statistics.median(ts),
                      "loader_ms_median": 1e3 * statistics.median(loading[name])}
               for name, ts in times.items()}
    report = {
        "benchmark": "fim_throughput", "date": date.today().isoformat(), "device": cpu_name(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "shape": {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head,
                  "vocab": cfg.vocab_size, "seq_len": cfg.block_size,
                  "tokens_per_update": tokens_per_step, "micro_batch": args.micro_batch},
        "fim_rate": args.fim_rate, "fim_spm_rate": args.spm_rate, "dtype": "bf16",
        "results": results, "fim_over_plain_tokens_per_s": ratio,
        "per_round": per_round, "goal": 0.95, "met": ratio >= 0.95,
        "command": command_line(NAME)}
    print(f"device {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16; {cfg.n_layer}L d={cfg.d_model}, vocab {cfg.vocab_size}, "
          f"{tokens_per_step:,} tokens per update")
    for name, r in results.items():
        print(f"  {name:6s} {r['tokens_per_s']:10,.0f} tok/s  {r['step_s_median'] * 1e3:7.1f} "
              f"ms/update, of which the loader {r['loader_ms_median']:.1f} ms")
    print(f"  fim / plain tokens/s: {ratio:.3f} (median of {len(per_round)} rounds; range "
          f"{min(per_round):.3f}-{max(per_round):.3f}); goal >= 0.95: "
          f"{'met' if report['met'] else 'NOT met'}")
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
