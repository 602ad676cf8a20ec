"""`codegpt prep` keeps the console for its own progress bars and funnel: datatrove's logs go to
files in the output folder (one per task, and logs/prep.log for what it would have printed)."""

import inspect
import re
import sys

import pytest
from test_prep_pipeline import prep, write

LOGURU_LINE = re.compile(r"\| (TRACE|DEBUG|INFO|SUCCESS|WARNING) +\|")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    import colorsys
    import textwrap

    root = tmp_path_factory.mktemp("tiny")
    write(root / "pkg" / "a.py", inspect.getsource(textwrap))
    write(root / "pkg" / "sub" / "b.py", inspect.getsource(colorsys))
    write(root / "c.py", b"\0binary")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_datatrove_logs_go_to_files_not_the_console(tiny_corpus, tmp_path, capfd, workers):
    import datatrove.utils.logging as dt_logging

    capfd.readouterr()
    stats = prep(tiny_corpus, tmp_path, 2, f"executor.workers={workers}", "decontam.enabled=false")
    err = capfd.readouterr().err
    assert stats["accounted"] and stats["kept"]["files"] == 2
    assert not LOGURU_LINE.search(err), err
    for line in ("Launching pipeline for rank=", "Processing done for rank=", "Stats: All 2 tasks"):
        assert line not in err
    task_log = (tmp_path / "logs" / "1_filter" / "logs" / "task_00000.log").read_text()
    assert "Launching pipeline for rank=0" in task_log and "Processing done for rank=0" in task_log
    console_log = (tmp_path / "logs" / "prep.log").read_text()
    for line in ("Launching pipeline for rank=", "Processing done for rank=", "Stats: All 2 tasks",
                 "plan exact + near dedup"):
        assert line in console_log
    assert dt_logging.sys is sys  # afterwards, datatrove's default logger is on the console again
