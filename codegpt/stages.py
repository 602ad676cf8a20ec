"""The pipeline's stages, in one table that the CLI, the reference run and the report read.

Each stage has one name: its section in a reference config, its key in a run's timings and
report, and (with ``-`` for ``_``) its folder in a run folder. The table also says which
``codegpt`` command writes that folder, where its configs live (``configs/<STAGE>/``, the config
class's ``STAGE``), the file whose presence shows the stage produced something, and which other
stages' folders it reads::

    data       codegpt prep       configs/data/      RUN/data/        documents (parquet)
    tokenizer  codegpt tokenizer  configs/tokenizer/ RUN/tokenizer/   tokenizer.json
    tokens     codegpt tokenize   configs/tokens/    RUN/tokens/      token shards
    train      codegpt train      configs/train/     RUN/train/       pretraining run
    sft_data   codegpt sft-data   configs/sft-data/  RUN/sft-data/    Codex-S pairs
    sft        codegpt train      configs/train/     RUN/sft/         Codex-S fine-tuning run
    humaneval  codegpt eval humaneval  configs/eval/ RUN/humaneval/MODEL/tT/  samples, pass@k
    humaneval_plus, mbpp, mbpp_plus: the same for the other benchmarks (``codegpt.benchmarks``),
               codegpt eval NAME, in RUN/NAME/MODEL/tT/
    infilling  codegpt eval infilling  configs/eval/ RUN/infilling/MODEL/tT/  middles, pass@k

The config classes are named as ``module:Class`` and imported only when asked for, so reading
the table imports no stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from codegpt.benchmarks import BENCHMARKS
from codegpt.outputs import eval_command


@dataclass(frozen=True)
class Stage:
    name: str            # the reference section, the timings and report key
    command: str         # the codegpt command that writes its folder (its marker names it)
    config: str          # "module:Class" of its config
    title: str           # what it is, in the report
    expect: str          # a file its folder holds once the stage has produced something
    reads: dict[str, str] = field(default_factory=dict)  # path key -> the stage it reads

    @property
    def folder(self) -> str:
        """Its folder in a run folder."""
        return self.name.replace("_", "-")

    @property
    def benchmark(self) -> str | None:
        """The benchmark an evaluation stage measures (its folder's name), None for another."""
        return self.folder if self.command.startswith("eval ") else None

    def config_class(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)


TRAIN = "codegpt.train.config:TrainConfig"
STAGES = (
    Stage("data", "prep", "data_prep.config:PrepConfig", "data prep", "stats.json"),
    Stage("tokenizer", "tokenizer", "codegpt.tokenizer.bpe:TokenizerConfig", "tokenizer",
          "tokenizer.json", {"data_dir": "data"}),
    Stage("tokens", "tokenize", "codegpt.tokenizer.encode:TokenizeConfig", "token shards",
          "meta.json", {"data_dir": "data", "tokenizer": "tokenizer"}),
    Stage("train", "train", TRAIN, "pretraining", "metrics.jsonl",
          {"data_dir": "tokens", "tokenizer": "tokenizer"}),
    Stage("sft_data", "sft-data", "codegpt.sft_data:SftDataConfig", "Codex-S data",
          "stats.json", {"data_dir": "data"}),
    Stage("sft", "train", TRAIN, "Codex-S fine-tuning", "metrics.jsonl",
          {"data_dir": "sft_data", "tokenizer": "tokenizer", "init_from": "train"}),
    *(Stage(name.replace("-", "_"), eval_command(name), "codegpt.eval.config:EvalConfig",
            b.title, "results.json", {"tokenizer": "tokenizer"})
      for name, b in BENCHMARKS.items()),
    Stage("infilling", "eval infilling", "codegpt.eval.config:InfillConfig",
          "HumanEval infilling", "results.json", {"tokenizer": "tokenizer"}),
)
EVALUATIONS = tuple(s for s in STAGES if s.benchmark)  # one per benchmark, HumanEval first
BY_NAME = {s.name: s for s in STAGES}
BY_FOLDER = {s.folder: s for s in STAGES}
# the models a run trains, by the name evaluation gives them: the stage whose run it is
MODELS = {"base": "train", "sft": "sft"}


def stage(name: str) -> Stage:
    return BY_NAME[name]
