"""executor.type=slurm without a cluster: the sbatch script each job would submit, and the
settings refused before anything is submitted. (tests/test_slurm_prep.py submits for real.)"""

import sysconfig

import pytest

from codegpt.config import ConfigError, load_config
from data_prep.config import PrepConfig
from data_prep.pipeline import make_executors, run_prep


def jobs(tmp_path, *overrides):
    cfg = load_config(PrepConfig, "default", [f"out_dir={tmp_path}", "executor.type=slurm",
                                              "executor.tasks=8", *overrides])
    return make_executors(cfg)


def directives(job) -> dict:
    script = job.get_launch_file_contents(job.get_sbatch_args(8), "true")
    return {line.split("=")[0][len("#SBATCH --"):]: line.partition("=")[2]
            for line in script.splitlines() if line.startswith("#SBATCH")}


def test_the_job_script_asks_only_for_what_was_configured(tmp_path):
    first = jobs(tmp_path)[0]
    d = directives(first)
    assert "partition" not in d and "qos" not in d  # the cluster's defaults
    assert d["array"] == "0-7" and d["time"] == "04:00:00" and d["mem-per-cpu"] == "2G"
    assert d["kill-on-invalid-dep"] == "yes"  # a cancelled task's dependants end, not hang
    script = first.get_launch_file_contents(first.get_sbatch_args(8), "true")
    assert f'export PATH="{sysconfig.get_path("scripts")}:$PATH"' in script

    d = directives(jobs(tmp_path / "b", "executor.workers=2", "executor.slurm={partition: gpu, "
                        "qos: high, time: '1-00:00:00', mem_per_cpu_gb: 8, "
                        "sbatch_args: {account: proj, kill-on-invalid-dep: 'no'}}")[0])
    assert (d["partition"], d["qos"], d["time"], d["mem-per-cpu"]) == ("gpu", "high", "1-00:00:00", "8G")
    assert d["account"] == "proj" and d["kill-on-invalid-dep"] == "no"
    assert d["array"] == "0-7%2"  # executor.workers: at most 2 tasks at a time


@pytest.mark.parametrize("option, message", [
    ("{partiton: cpu}", "unknown option 'executor.slurm.partiton'; did you mean 'partition'\\?"),
    ("{time: '4 hours'}", "executor.slurm.time must be a Slurm time limit"),
    ("{time: -5}", "executor.slurm.time must be a Slurm time limit"),
    ("{time: 1.5}", "executor.slurm.time must be a Slurm time limit"),
    ("{mem_per_cpu_gb: 1.5}", "executor.slurm.mem_per_cpu_gb must be a whole number of GB"),
    ("{cpus_per_task: 0}", "executor.slurm.cpus_per_task must be a whole number >= 1"),
    ("{tasks: 3}", "executor.slurm.tasks is set by codegpt"),
    ("{partition: ''}", "executor.slurm.partition must be a partition name"),
    ("{gpus_per_task: true}", "executor.slurm.gpus_per_task must be a whole number >= 0, got True"),
    ("{max_array_size: 0}", "executor.slurm.max_array_size must be a whole number >= 1, or -1"),
    ("{zzz: 1}", r"unknown option 'executor.slurm.zzz' \(known: .*cpus_per_task.*partition"),
])
def test_bad_slurm_settings_are_refused_by_name_before_anything_is_written(tmp_path, option,
                                                                            message):
    out = tmp_path / "out"
    cfg = load_config(PrepConfig, "default", [f"out_dir={out}", "executor.type=slurm",
                                              f"executor.slurm={option}"])
    with pytest.raises(ConfigError, match=message):
        run_prep(cfg)
    assert not out.exists()


def test_without_slurm_commands_the_error_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no squeue
    out = tmp_path / "out"
    cfg = load_config(PrepConfig, "default", [f"out_dir={out}", "executor.type=slurm"])
    with pytest.raises(ConfigError, match="sbatch and squeue not found"):
        run_prep(cfg)
    assert not out.exists()


@pytest.mark.parametrize("written, sent", [
    ("4:00:00", "4:00:00"),    # YAML 1.1 would read the base-60 integer 14400: 10 days
    ("1:30", "1:30"),          # Slurm's MINUTES:SECONDS, not 90 minutes
    ("'2-12'", "2-12"),
    ("240", "240"),            # minutes
    ("UNLIMITED", "UNLIMITED"),
])
def test_a_time_limit_reaches_sbatch_as_written(tmp_path, written, sent):
    """Unquoted in a config file or in an override, a time limit is sent as the user wrote it."""
    config = tmp_path / "prep.yaml"
    config.write_text(f"executor:\n  type: slurm\n  slurm:\n    time: {written}\n")
    from_file = load_config(PrepConfig, str(config), [f"out_dir={tmp_path / 'a'}"])
    assert directives(make_executors(from_file)[0])["time"] == sent
    assert directives(jobs(tmp_path / "b", f"executor.slurm={{time: {written}}}")[0])["time"] == sent
