"""The reference run (`codegpt reference`, `make reference`): every stage into one folder, a
complete stage skipped, a killed run continued, settings that changed refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from codegpt.config import load_config
from codegpt.errors import ConfigError
from codegpt.outputs import output_state
from codegpt.reference import ReferenceConfig, results_table, validate

from conftest import REPO
from test_benchmarks import MBPP_ROWS, write as write_rows

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ("json", "email", "http", "logging", "concurrent", "wsgiref", "xmlrpc", "urllib")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A few standard-library packages, one repository each."""
    root = tmp_path_factory.mktemp("corpus")
    for name in PACKAGES:
        shutil.copytree(STDLIB / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "test*"))
    return root


def tiny_config(corpus: Path, run: Path, **changes) -> Path:
    """The reference config's shape with every size cut to seconds."""
    cfg = {
        "out_dir": str(run),
        "budget_minutes": 30,
        "data": {"config": "default", "sources": [{"type": "local", "roots": [str(corpus)]}],
                 "executor": {"tasks": 1, "workers": 1}},
        "tokenizer": {"config": "default", "vocab_size": 600, "sample_mb": 2},
        "tokens": {"config": "default", "val_fraction": 0.2},
        "train": {"config": "smoke", "model": {"block_size": 256}, "batch":
                  {"global_batch_tokens": 1024, "micro_batch_size": 4},
                  "run": {"max_steps": 8}, "data": {"val_every": 4, "val_sequences": 8,
                                                    "fim_rate": 0.5},
                  "checkpoint": {"every": 4, "keep_last": 2}},
        "sft_data": {"config": "default", "max_chars": 500, "doctest_timeout": 2.0},
        "sft": {"run": {"max_steps": 3}, "data": {"format": "sft", "val_every": 3,
                                                 "val_sequences": 8},
                "batch": {"global_batch_tokens": 1024, "micro_batch_size": 4},
                "optim": {"lr": 3e-4, "warmup_steps": 1}},
        "humaneval": {"models": ["base", "sft"], "runs": [{"temperature": 0.2, "n": 1},
                                                           {"temperature": 0.8, "n": 2}],
                      "limit": 3, "sampling": {"max_new_tokens": 8},
                      "sandbox": {"timeout": 3.0}},
        # MBPP from a local file (the fine-tuned model); HumanEval+ asked for but not here
        "mbpp": {"problems": str(write_rows(run.parent / "mbpp.jsonl", MBPP_ROWS)),
                 "models": ["sft"], "runs": [{"temperature": 0.8, "n": 2}], "limit": 2,
                 "sampling": {"max_new_tokens": 8}, "sandbox": {"timeout": 3.0}},
        "humaneval_plus": {"models": ["sft"], "runs": [{"temperature": 0.2, "n": 1}]},
        # single-line infilling of both models: the fine-tuned one learned FIM from pretraining
        "infilling": {"limit": 3, "sampling": {"max_new_tokens": 8},
                      "sandbox": {"timeout": 3.0}},
    }
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def reference(config: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codegpt", "reference", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                               # no Hub dataset on this machine (an empty datasets cache)
                               "HF_DATASETS_CACHE": str(config.parent / "no-datasets")})


def skips(proc: subprocess.CompletedProcess) -> int:
    """How many stages a reference run skipped (done before, or without their data)."""
    return sum(line.startswith("== ") and "skipped" in line for line in proc.stdout.splitlines())


STAGES = ["data", "tokenizer", "tokens", "train", "sft_data", "sft", "humaneval/base/t0.2",
          "humaneval/base/t0.8", "humaneval/sft/t0.2", "humaneval/sft/t0.8",
          "humaneval-plus/sft/t0.2", "mbpp/sft/t0.8", "infilling/base/t0.2",
          "infilling/sft/t0.2", "report"]
SKIPPED = "humaneval-plus/sft/t0.2"  # its data is not on the machine


@pytest.mark.slow
def test_reference_runs_every_stage_once_and_reports(corpus, tmp_path):
    run = tmp_path / "ref"
    config = tiny_config(corpus, run)
    proc = reference(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings = json.loads((run / "timings.json").read_text())
    assert list(timings["stages"]) == STAGES
    assert all(s["status"] == "done" for k, s in timings["stages"].items() if k != SKIPPED)
    # a benchmark whose data is not here is skipped, saying how to get it; the rest runs
    skipped = timings["stages"][SKIPPED]
    assert skipped["status"] == "skipped" and "HumanEval+ is not on this machine" in \
        skipped["reason"] and "datasets.load_dataset('evalplus/humanevalplus'" in skipped["reason"]
    assert f"== {SKIPPED}: skipped: HumanEval+ is not on this machine" in proc.stdout
    assert not (run / "humaneval-plus").exists()
    for stage, folder in (("data", "data/stats.json"), ("tokens", "tokens/meta.json"),
                          ("sft_data", "sft-data/train.jsonl"), ("report", "report/report.html")):
        assert (run / folder).is_file(), f"{stage}: {folder} missing"
    # the fine-tuning started from pretraining's last checkpoint
    sft_cfg = yaml.safe_load((run / "sft" / "config.yaml").read_text())
    assert sft_cfg["init_from"].endswith("train/checkpoints/step_0000008")
    results = json.loads((run / "results.json").read_text())
    for model in ("base", "sft"):
        m = results["models"][model]
        he = m["benchmarks"]["humaneval"]
        assert m["val_loss"] > 0 and he["canonical_bits_per_byte"] > 0
        assert set(he["temperatures"]) == {"0.2", "0.8"}
        assert he["temperatures"]["0.8"]["n"] == 2 and "pass@1" in he["temperatures"]["0.8"]
        assert he["temperatures"]["0.8"]["problems"] == 3
        # the problems solved by name, and how many prompts were cut to fit the context
        assert isinstance(he["temperatures"]["0.8"]["solved"], list)
        assert isinstance(he["temperatures"]["0.8"]["prompts_cut"], int)
    # the fine-tuned model on MBPP too: its first 2 problems, n=2, with the likelihood
    mbpp = results["models"]["sft"]["benchmarks"]["mbpp"]
    assert mbpp["canonical_bits_per_byte"] > 0 and mbpp["temperatures"]["0.8"]["problems"] == 2
    assert set(results["models"]["sft"]["benchmarks"]) == {"humaneval", "mbpp", "infilling"}
    for model in ("base", "sft"):  # infilling with and without the suffix: both learned FIM
        inf = results["models"][model]["benchmarks"]["infilling"]
        assert inf["middle_fim_bits_per_byte"] > 0 and inf["middle_l2r_bits_per_byte"] > 0
        assert inf["temperatures"]["0.2"]["problems"] == 3
        assert "exact_match" in inf["temperatures"]["0.2"]
        r = json.loads((run / "infilling" / model / "t0.2" / "results.json").read_text())
        assert r["fim_order"] == "psm" and r["fim_trained"]["fim_rate"] == 0.5
    assert "mbpp" not in results["models"]["base"]["benchmarks"]
    assert list(results["skipped"]) == [SKIPPED]
    samples = (run / "mbpp" / "sft" / "t0.8" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in samples] == ["Mbpp/11"] * 2 + ["Mbpp/12"] * 2
    assert output_state(run / "mbpp" / "sft" / "t0.8", "eval mbpp") == "complete"
    assert results["within_budget"] and results["total_seconds"] > 0
    table = results_table(results)
    assert "| sft | " in table and "| mbpp |" in table and "| base |" in proc.stdout
    assert "| infilling (single-line) |" in table
    # the stage configs are files a user can rerun by hand
    assert yaml.safe_load((run / "configs" / "tokens.yaml").read_text())["tokenizer"] == \
        str(run / "tokenizer")

    # run again: every stage's output is complete, nothing runs
    started = time.time()
    again = reference(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert skips(again) == len(STAGES) - 1  # the report is always redrawn
    assert "$ codegpt" not in again.stdout
    assert time.time() - started < 60
    assert output_state(run, "reference") == "complete"

    # an output that is no longer complete (its marker lists a file that is gone) runs again
    (run / "humaneval" / "sft" / "t0.8" / "samples.jsonl").unlink()
    third = reference(config)
    assert third.returncode == 0, third.stderr[-3000:]
    assert skips(third) == len(STAGES) - 2
    assert "== humaneval/sft/t0.8 (continuing)" in third.stdout
    assert output_state(run / "humaneval" / "sft" / "t0.8", "eval humaneval") == "complete"

    # changed settings of a finished stage are refused by name, and nothing is lost
    changed = tiny_config(corpus, run, **{"train.optim": {"lr": 1e-3}})
    refused = reference(changed)
    assert refused.returncode == 2
    assert "stage train already ran with other settings" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (run / "train" / "checkpoints" / "step_0000008").is_dir()
    # the report shows every stage: none missing, unreadable or cut short; MBPP beside
    # HumanEval, and HumanEval+ skipped with why
    page = (run / "report" / "report.html").read_text()
    for word in ("not run", "unreadable", "incomplete", "cannot be shown"):
        assert word not in page, word
    assert '<section id="mbpp">' in page and "skipped: HumanEval+ is not on this machine" in page
    # each evaluation ran with its eval config, a file a user can rerun by hand
    eval_cfg = yaml.safe_load((run / "configs" / "humaneval-sft-t0.8.yaml").read_text())
    assert eval_cfg["sampling"]["temperature"] == 0.8 and eval_cfg["sampling"]["n"] == 2
    assert eval_cfg["checkpoint"] == str(run / "sft") and eval_cfg["likelihood"] == "skip"


@pytest.mark.slow
def test_a_killed_reference_run_continues_where_it_stopped(corpus, tmp_path):
    run = tmp_path / "ref"
    config = tiny_config(corpus, run, **{"train.run": {"max_steps": 40},
                                          "train.model": {"block_size": 256, "n_layer": 4,
                                                          "d_model": 256}})
    cmd = [sys.executable, "-m", "codegpt", "reference", str(config)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.time() + 400
    first = run / "train" / "checkpoints" / "step_0000004"
    while not first.exists():
        assert proc.poll() is None and time.time() < deadline, "ended before step 4"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the training under it
    proc.wait()
    timings = json.loads((run / "timings.json").read_text())
    assert timings["stages"]["train"]["status"] == "started"
    assert timings["stages"]["tokens"]["status"] == "done"

    done = reference(config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "== data: done in an earlier run" in out and "== tokens: done in an earlier run" in out
    assert "== train (continuing)" in out
    steps = [json.loads(line)["step"] for line in (run / "train" / "metrics.jsonl").open()
             if '"loss"' in line]
    assert steps[-1] == 40 and steps.count(1) == 1  # resumed from its checkpoint, not restarted


def test_bad_reference_configs_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="train.out_dir is set by the reference run"):
        load_config(ReferenceConfig, None, ["train.out_dir=elsewhere"])
    with pytest.raises(ConfigError, match=r"humaneval.models\[1\] must be one of base, sft, "
                                          "got 'large'"):
        load_config(ReferenceConfig, None, ["humaneval.models=[base, large]"])
    with pytest.raises(ConfigError, match="unknown config key 'trian.run.max_steps'"):
        load_config(ReferenceConfig, None, ["trian.run.max_steps=3"])
    cfg = load_config(ReferenceConfig, "cpu", ["train.optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="section train: unknown config key 'optim.lrr'"):
        validate(cfg)


def test_the_shipped_reference_configs_load_and_validate():
    shipped = sorted(p.stem for p in (REPO / "configs" / "reference").glob("*.yaml"))
    assert {"cpu", "cpu-gpt3", "gpu"} <= set(shipped)
    for name in shipped:
        cfg = load_config(ReferenceConfig, name, [])
        validate(cfg)
        assert cfg.train["run"]["max_minutes"] > 0
    for name in ("cpu", "cpu-gpt3"):  # the same budgets: the two recipes side by side
        cpu = load_config(ReferenceConfig, name, [])
        assert cpu.budget_minutes == 30 and cpu.train["run"]["max_minutes"] == 15
    # the GPT-3 recipe keeps GPT-3's architecture and AdamW
    gpt3 = load_config(ReferenceConfig, "cpu-gpt3", [])
    assert not {"positions", "norm", "mlp", "qk_norm", "bias"} & set(gpt3.train["model"])
    assert "name" not in gpt3.train["optim"]


def test_an_outdated_stage_output_is_kept_until_its_replacement_is_complete(tmp_path,
                                                                             monkeypatch):
    """Once an earlier stage ran again, a later stage that writes in place (training) starts
    over; its outdated output is moved aside and deleted only when the new one is complete."""
    from codegpt import reference as ref_module
    from codegpt.errors import StageFailed
    from codegpt.outputs import write_marker

    run = tmp_path / "ref"
    ref = ref_module.Reference(ReferenceConfig(out_dir=str(run)), "test")
    ref.timings = ref_module.Timings(run)
    old = run / "train"
    old.mkdir(parents=True)
    (old / "status.json").write_text('{"status": "finished"}')
    write_marker(old, "train", "complete", ["status.json"])
    ref.timings.set("train", status="done", config=ref_module.config_hash("cfg"), seconds=1.0)

    def failing(argv):
        assert not old.exists() and len(list((run / ".replaced").iterdir())) == 1
        raise StageFailed("the new training failed")

    ref.rerun_rest = True
    monkeypatch.setattr(ref_module, "run_command", failing)
    with pytest.raises(StageFailed):
        ref.stage("train", "train", "cfg", old, ["codegpt", "train"])
    (kept,) = (run / ".replaced").iterdir()
    assert (kept / "status.json").read_text() == '{"status": "finished"}'

    def succeeding(argv):
        old.mkdir()
        (old / "status.json").write_text('{"status": "finished", "new": true}')
        write_marker(old, "train", "complete", ["status.json"])

    monkeypatch.setattr(ref_module, "run_command", succeeding)
    ref.stage("train", "train", "cfg", old, ["codegpt", "train"])
    assert output_state(old, "train") == "complete" and "new" in (old / "status.json").read_text()
    assert not (run / ".replaced").exists() or not list((run / ".replaced").iterdir())


def test_a_run_folder_given_relative_to_the_working_directory_is_marked_complete(
        tmp_path, monkeypatch):
    """out_dir: runs/reference (as the shipped configs say): the run's results, timings and
    report are found where they are, not under the run folder a second time."""
    from codegpt import reference as ref_module
    from codegpt.outputs import output_state

    monkeypatch.chdir(tmp_path)
    ref = ref_module.Reference(ReferenceConfig(out_dir="runs/ref"), "test")

    def stages():
        (ref.run / "report").mkdir(parents=True)
        for name in ("results.json", "timings.json", "report/report.html"):
            (ref.run / name).write_text("{}")
        return {}, ref.run / "report" / "report.html"

    monkeypatch.setattr(ref, "stages", stages)
    monkeypatch.setattr(ref_module, "print_summary", lambda results, page: None)
    ref.run_pipeline()
    assert output_state(tmp_path / "runs" / "ref", "reference") == "complete"
