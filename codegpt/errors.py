"""The one error base class, and one subclass per kind of bad input.

Library code raises these with a message that says what was wrong and what to do; the CLI
catches ``CodegptError`` once, prints ``error: <message>`` as one line and exits with the
error's ``exit_code`` (2 for bad input). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CodegptError(Exception):
    """Bad input the user can fix: a config, a path, a file that cannot be used."""

    exit_code = 2


class ConfigError(CodegptError, ValueError):
    """A config file, override or command-line value that cannot be applied."""


class DataError(CodegptError, ValueError):
    """Data prep's documents (parquet shards) missing, empty or malformed."""


class ShardError(CodegptError, ValueError):
    """Token shards that are missing, truncated or inconsistent with their meta.json."""


class TokenizerError(CodegptError, ValueError):
    """Training data or a tokenizer file that cannot be used."""


class CheckpointError(CodegptError, RuntimeError):
    """A checkpoint that is missing, partial, truncated or otherwise unusable."""


class EvalError(CodegptError, ValueError):
    """A samples file or problem set that cannot be scored."""


class ExportError(CodegptError, RuntimeError):
    """A checkpoint that cannot be exported as GPT-2."""


class ReportError(CodegptError, ValueError):
    """A folder that is not a pipeline run folder (missing, or holding none of the stages), or a
    file of a run that cannot be read or holds values of unexpected types."""


class SourceError(CodegptError, RuntimeError):
    """A data prep source that cannot go on: git that fails or times out, a GitHub discovery
    refused (bad credentials) or resumed from another query's state."""


class OutputError(CodegptError, ValueError):
    """An output path that a command may not write: empty or root-like, a file where a folder
    belongs, another stage's output, or a folder holding files codegpt did not write."""


class IncompleteError(CodegptError, ValueError):
    """A stage's output that is not complete (killed, failed, or altered since): the stage that
    wrote it must run again before the next one may read it."""


class LockError(CodegptError, RuntimeError):
    """An output folder another run is writing to right now (its lock is held by a live
    process)."""


class DiskFullError(CodegptError, OSError):
    """No space left on the device while a command wrote its output; the last complete output
    is unchanged and the command's temporary files are removed."""


class StageFailed(CodegptError, RuntimeError):
    """A stage of the reference run exited with an error (its own message comes first)."""


class NonFiniteLossError(CodegptError, RuntimeError):
    """The loss or gradient norm became NaN or inf: the run stops before the update."""

    exit_code = 3
