"""Loss curves of a run as a PNG, written atomically; only a plot of ours is ever replaced."""

from __future__ import annotations

import io
from pathlib import Path

from codegpt.errors import OutputError
from codegpt.io import atomic_write_bytes
from codegpt.train.metrics import read_metrics

SOFTWARE = "codegpt plot"  # in the PNG's metadata: what tells our plots from other files


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib  # heavy (a second to import): only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = plot_path(run_dir, out)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": SOFTWARE})
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def plot_path(run_dir: Path, out: str | Path | None) -> Path:
    """Where the plot goes: ``out``, or RUN_DIR/loss.png. A folder, an empty path, or a file
    that is not a plot codegpt wrote is refused: replacing it would lose it."""
    if out is not None and not str(out).strip():
        raise OutputError("--out is empty: name the PNG file to write")
    path = Path(out) if out is not None else run_dir / "loss.png"
    if path.is_dir():
        raise OutputError(f"--out {out} is a folder: name the PNG file to write, e.g. "
                          f"{path / 'loss.png'}")
    if path.exists() and not _our_plot(path, default=out is None):
        raise OutputError(f"{path} exists and is not a plot codegpt wrote; it would be "
                          "replaced: choose another --out")
    return path


def _our_plot(path: Path, default: bool) -> bool:
    """A PNG that `codegpt plot` wrote (it says so in its metadata); at the default place,
    also one an older codegpt wrote with matplotlib."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    return SOFTWARE.encode() in head or (default and b"Matplotlib" in head)
