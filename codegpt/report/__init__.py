"""``codegpt report RUN_DIR``: a pipeline run folder as one self-contained HTML page.

``run`` reads what each stage wrote (any stage may be missing), ``plots`` draws the figures as
PNGs, ``page`` lays them out with the tables and escapes everything the run wrote. The page
embeds the figures as data URIs and needs no script, stylesheet or font from anywhere, so it
opens offline; the PNGs are written beside it too.
"""

from __future__ import annotations

from pathlib import Path

from codegpt.io import atomic_write_bytes, atomic_write_text
from codegpt.report.run import ReportError, Run, read_run

__all__ = ["ReportError", "Run", "read_run", "write_report"]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.html`` and its PNGs to ``out_dir`` (default RUN_DIR/report) and return
    the path of report.html. ReportError if ``run_dir`` is not a run folder."""
    from codegpt.report.page import render
    from codegpt.report.plots import PNG_NAMES, figures

    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.dir / "report"
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    figs = figures(run)
    out.mkdir(parents=True, exist_ok=True)
    for name in PNG_NAMES:  # a figure of an earlier report that this run no longer has
        if name not in figs:
            (out / name).unlink(missing_ok=True)
    for name, data in figs.items():
        atomic_write_bytes(out / name, data)
    atomic_write_text(out / "report.html", render(run, figs))
    return out / "report.html"
