"""``codegpt report RUN_DIR``: a pipeline run folder as one self-contained HTML page.

``run`` reads what each stage wrote (any stage may be missing), ``plots`` draws the figures as
PNGs, ``page`` lays them out with the tables and escapes everything the run wrote. The page
embeds the figures as data URIs and needs no script, stylesheet or font from anywhere, so it
opens offline; the PNGs are written beside it too.
"""

from __future__ import annotations

from pathlib import Path

from codegpt.errors import ReportError
from codegpt.io import atomic_write_bytes, atomic_write_text
from codegpt.outputs import check_output, writing_aside
from codegpt.report.page import render
from codegpt.report.plots import figures
from codegpt.report.run import Run, read_run

__all__ = ["ReportError", "Run", "read_run", "write_report"]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.html`` and its PNGs to ``out_dir`` (default RUN_DIR/report) and return
    the path of report.html. ReportError if ``run_dir`` is not a run folder."""
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.dir / "report"
    check_output(out, "report")  # before the figures are drawn
    figs = figures(run)
    with writing_aside(out, "report") as staging:  # swapped in whole: no figure of an older one
        for name, data in figs.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_text(staging / "report.html", render(run, figs))
    return out / "report.html"
