"""The report's figures as PNG bytes (matplotlib, Agg), in the style of ``codegpt plot``.

Each function returns None when the run has nothing to draw. Labels that come from the run
(reasons, model and folder names) go through ``label``: matplotlib would read ``$...$`` in them
as math and hide legend entries that start with an underscore.
"""

from __future__ import annotations

import io

from codegpt.report.run import Eval, Run, TrainRun, funnel_rows
from codegpt.stages import MODELS, stage

DPI = 110
STAGE_COLORS = {"read": "tab:gray", "filter": "tab:orange", "decontam": "tab:red",
                "dedup": "tab:purple"}
LINESTYLES = ("-", "--", ":", "-.")


def pyplot():
    # imported when a figure is drawn: matplotlib is heavy, and the CLI imports the report
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(text: object) -> str:
    text = str(text).replace("\\", "\\\\").replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def funnel_png(stats: dict) -> bytes | None:
    """Files and MB removed per stage and reason (data prep)."""
    rows = [(stage, reason, v.get("files", 0), v.get("bytes", 0))
            for stage, reason, v in funnel_rows(stats)]
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.32 * len(rows)), sharey=True)
    names = [label(f"{stage}/{reason}") for stage, reason, _, _ in rows][::-1]
    colors = [STAGE_COLORS.get(stage, "tab:blue") for stage, *_ in rows][::-1]
    for ax, values, title in ((axes[0], [r[2] for r in rows][::-1], "files removed"),
                              (axes[1], [r[3] / 1e6 for r in rows][::-1], "MB removed")):
        ax.barh(names, values, color=colors)
        ax.set_xlabel(title)
        ax.grid(alpha=0.3, axis="x")
    inputs, kept = stats["inputs"], stats["kept"]
    fig.suptitle(f"data prep: {inputs.get('files', 0):,} files in, {kept.get('files', 0):,} kept "
                 f"({kept.get('bytes', 0) / 1e6:,.1f} of {inputs.get('bytes', 0) / 1e6:,.1f} MB)")
    return png(fig)


def sft_funnel_png(stats: dict) -> bytes | None:
    """Codex-S candidates rejected per reason, and kept."""
    rows = [(label(r), n) for r, n in stats["rejected"].items()] + [("kept", stats["kept"])]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(rows)))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1],
            color=["tab:green"] + ["tab:orange"] * (len(rows) - 1))
    ax.set_xlabel("candidate functions")
    ax.set_title(f"Codex-S pairs: {stats['candidates']:,} candidates")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def training_png(runs: list[tuple[str, TrainRun]]) -> bytes | None:
    """Train and val loss against tokens (top) and the learning rate (bottom), one column per
    run, as ``codegpt plot`` draws one run."""
    runs = [(title, r) for title, r in runs if r is not None and r.rows]
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 6), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [3, 1]})
    for col, (title, run) in enumerate(runs):
        ax, ax_lr = axes[0][col], axes[1][col]
        ax.plot(*run.series("loss"), label="train loss", lw=1)
        if run.val:
            ax.plot([v[1] for v in run.val], [v[2] for v in run.val], "o-", label="val loss")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(label(title))
        ax.grid(alpha=0.3)
        ax.legend()
        ax_lr.plot(*run.series("lr"), color="tab:green")
        ax_lr.set_ylabel("lr")
        ax_lr.set_xlabel("tokens")
        ax_lr.grid(alpha=0.3)
    return png(fig)


def throughput_png(runs: list[tuple[str, TrainRun]]) -> bytes | None:
    """Tokens/s and MFU against tokens, a line per run."""
    runs = [(title, r) for title, r in runs if r is not None and r.series("tokens_per_s")[0]]
    if not runs:
        return None
    plt = pyplot()
    fig, (ax, ax_mfu) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (title, run) in enumerate(runs):
        ax.plot(*run.series("tokens_per_s"), lw=1, color=f"C{i}", label=label(title))
        tokens, mfu = run.series("mfu")
        if mfu:
            ax_mfu.plot(tokens, [100 * m for m in mfu], lw=1, color=f"C{i}", label=label(title))
    ax.set_ylabel("tokens/s")
    ax_mfu.set_ylabel("MFU (%)")
    if not ax_mfu.lines:
        ax_mfu.set_xticks([])
        ax_mfu.set_yticks([])
        ax_mfu.text(0.5, 0.5, "no MFU recorded\n(no known peak FLOP/s: CPU or unknown GPU)",
                    ha="center", va="center", transform=ax_mfu.transAxes, color="0.4")
    for a in (ax, ax_mfu):
        a.set_xlabel("tokens")
        a.grid(alpha=0.3)
        if a.lines:
            a.legend()
    return png(fig)


def pass_at_k_file(benchmark: str) -> str:
    """The file name of a benchmark's pass@k figure (HumanEval's kept its first name)."""
    return "pass_at_k.png" if benchmark == "humaneval" else f"pass_at_k_{benchmark}.png"


def pass_at_k_png(evals: list[Eval], title: str = "HumanEval") -> bytes | None:
    """pass@k against k: a line per model and temperature (colour: model, style: temperature)."""
    evals = [e for e in evals if e.pass_curve]
    if not evals:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    models = list(dict.fromkeys(e.model for e in evals))
    temps = list(dict.fromkeys((e.temperature, e.label) for e in evals))
    for e in evals:
        ks, values = zip(*e.pass_curve)
        ax.plot(ks, [100 * v for v in values], marker="o", ms=4,
                color=f"C{models.index(e.model) % 10}",
                linestyle=LINESTYLES[temps.index((e.temperature, e.label)) % len(LINESTYLES)],
                label=label(e.name))
    ax.set_xscale("log")
    ks = sorted({k for e in evals for k, _ in e.pass_curve})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    top = max(100 * v for e in evals for _, v in e.pass_curve)
    ax.set_ylim(0, max(5.0, top * 1.15))
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{title} pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def figures(run: Run) -> dict[str, bytes]:
    """Every figure the run has something for, by file name (``run`` holds only values of the
    types its readers checked)."""
    runs = [(f"{s.title} ({s.folder}/)", run.output(s.name)) for s in map(stage, MODELS.values())]
    made = {"funnel.png": funnel_png(run.data) if run.data else None,
            "sft_funnel.png": sft_funnel_png(run.sft_data) if run.sft_data else None,
            "training.png": training_png(runs),
            "throughput.png": throughput_png(runs),
            **{pass_at_k_file(s.folder): pass_at_k_png(run.of(s.folder), s.title)
               for s in run.evaluations()}}
    return {name: data for name, data in made.items() if data is not None}
