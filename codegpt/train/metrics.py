"""Run metrics: one JSON object per line in ``metrics.jsonl``, mirrored to wandb when enabled."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from pathlib import Path

from codegpt.io import atomic_write_text

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict]:
    """All complete records; a torn last line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


class MetricsLogger:
    """Writes on the main process only; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: str | Path, enabled: bool, resume_step: int | None = None,
                 wandb_cfg: dict | None = None, config: dict | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self._file = open(self.path, "a", buffering=1)
        if wandb_cfg and wandb_cfg.get("mode") != "disabled":
            self._wandb = _start_wandb(Path(run_dir), wandb_cfg, config, resume_step is not None)

    def _truncate_after(self, step: int) -> None:
        """On resume drop records the interrupted run logged past its last checkpoint."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step" and v is not None},
                            step=record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(run_dir: Path, cfg: dict, config: dict | None, resume: bool):
    import wandb  # heavy (seconds to import): only for a run that logs to it

    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
    atomic_write_text(id_file, run_id)
    mode = os.environ.get("WANDB_MODE", cfg.get("mode", "offline"))
    return wandb.init(project=cfg.get("project", "codegpt"), dir=str(run_dir), id=run_id,
                      resume="allow" if resume else None, mode=mode, config=config,
                      name=run_dir.name)
