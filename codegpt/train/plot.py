"""Loss curves of a run as a PNG."""

from __future__ import annotations

from pathlib import Path

from codegpt.train.metrics import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"no metrics in {run_dir / 'metrics.jsonl'}")
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                    gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"codegpt run: {run_dir}")
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.plot(*zip(*lr), color="tab:green")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
