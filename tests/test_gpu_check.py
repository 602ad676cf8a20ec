"""The GPU check's CPU dry run: every step of `python -m bench.gpu_check` at toy sizes, so the
command a GPU session runs once is known to work before it runs there."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out),
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and set(report["throughput"]) == {
        "gpt3-125m", "llama-125m", "gpt3-350m", "llama-350m"}
    for size, figures in report["throughput"].items():
        assert "error" not in figures, figures
        assert figures["tokens_per_s"] > 0 and figures["flops_per_token"] > 0, size
    assert "error" not in report["attention"], report["attention"]
    assert report["attention"]["ops"] and report["attention"]["kernel"]
    ref = report["reference"]
    assert "error" not in ref, ref.get("traceback")
    assert set(ref["stage_s"]) == {"prep", "tokenizer", "tokens", "train", "likelihood"}
    assert ref["steps"] > 0 and 0 < ref["canonical_bits_per_byte"] < 20


def test_without_a_gpu_it_says_how_to_check_it(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "x")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    assert not (tmp_path / "x").exists()
