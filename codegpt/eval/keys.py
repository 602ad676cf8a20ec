"""Keys that only this machine's scorer can make: HMACs under a secret kept outside every samples
file, so a stored verdict or a reranking score cannot be forged by whoever writes the file.

The secret is 32 random bytes in ``$CODEGPT_STATE_DIR/verdict.key`` (default
``$XDG_STATE_HOME/codegpt``, else ``~/.local/state/codegpt``), created on first use, readable by
its owner only. The sandbox mounts nothing of the host's home or state folders, so a program
being scored cannot read it. Where it cannot be kept (no writable state folder), a secret for
this process alone is used: verdicts are then run again in the next process, never trusted.

- ``verdict_key``: ties a stored verdict (``passed``, ``result``) to the program that ran, the
  timeout and the sandbox method. A verdict is reused only if its key matches the one computed
  now; a recomputed plain hash, another machine's key or an edited verdict is run again.
- ``logp_key``: ties a sample's ``mean_logp`` to our own generation of it (task, sample index,
  completion, score). Only scores whose key verifies may rerank.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

VERDICT_VERSION = "codegpt-verdict-v3"  # v3: an HMAC under the scorer's secret
LOGP_VERSION = "codegpt-logp-v1"
_SECRET: bytes | None = None


def state_dir() -> Path:
    if os.environ.get("CODEGPT_STATE_DIR"):
        return Path(os.environ["CODEGPT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "codegpt"


def secret() -> bytes:
    """This machine's scoring secret (created once, mode 0600)."""
    global _SECRET
    if _SECRET is None:
        path = state_dir() / "verdict.key"
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            value = bytes.fromhex(path.read_text().strip())
            if len(value) < 16:
                raise ValueError("too short")
            _SECRET = value
        except (OSError, ValueError) as e:
            log.warning("no scoring secret at %s (%s): stored verdicts will not be reused after "
                        "this process", path, e)
            _SECRET = secrets.token_bytes(32)
    return _SECRET


def _mac(record: list) -> str:
    text = json.dumps(record, ensure_ascii=True, allow_nan=True)
    return hmac.new(secret(), text.encode("ascii"), hashlib.sha256).hexdigest()


def verdict_key(program_text: str, timeout: float, method: str, passed: object,
                result: object) -> str:
    """The HMAC of the program that ran, the timeout, the sandbox method and the verdict."""
    return _mac([VERDICT_VERSION, program_text, float(timeout), method, passed, result])


def logp_key(task_id: str, sample: object, completion: str, mean_logp: float) -> str:
    """The HMAC of one generated sample's score."""
    return _mac([LOGP_VERSION, task_id, sample, completion, repr(float(mean_logp))])


def matches(key: object, expected: str) -> bool:
    return isinstance(key, str) and hmac.compare_digest(key, expected)
