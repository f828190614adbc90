"""The run's record, ``<work-dir>/training_log.json``: the training curves, each phase's results and the wall clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ldrps_pipeline.demo_training.atomic_files import write_json

__all__ = ["TrainingLog"]


class TrainingLog:
    """The JSON record of a (resumable) run, with the wall-clock time of all its invocations.

    ``record`` is what ``training_log.json`` holds: ``architecture`` (the model options), the curves
    ``vae`` and ``unet`` (one entry per ``--log-every`` steps), ``wall_seconds`` (all invocations together),
    ``parameters``, ``machine``, ``command`` and, as the phases end, their results.
    """

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        self._wall_seconds_before = float(record.get("wall_seconds", 0.0))
        self._started = time.monotonic()

    @classmethod
    def open(cls, work_dir: Path, architecture: dict[str, Any], parameters: dict[str, int]) -> TrainingLog:
        """Continue the log in ``work_dir``, or start one.

        Raises:
            SystemExit: if the work dir holds a run with other model options.
        """
        path = work_dir / "training_log.json"
        if not path.exists():
            record = {
                "architecture": architecture,
                "vae": [],
                "perceptual": [],
                "unet": [],
                "wall_seconds": 0.0,
                "parameters": parameters,
            }
            return cls(path, record)
        record = json.loads(path.read_text())
        if record.get("architecture") != architecture:
            raise SystemExit(
                f"{work_dir} holds a run with other model options {record.get('architecture')}; "
                "use the same options or a fresh --work-dir"
            )
        return cls(path, record)

    def account(self) -> None:
        """Set ``wall_seconds``: the earlier invocations' time plus this one's so far."""
        self.record["wall_seconds"] = self._wall_seconds_before + time.monotonic() - self._started

    def write(self) -> None:
        """Write the record to ``training_log.json`` (atomically)."""
        write_json(self.record, self.path)

    def save(self) -> None:
        """Account the wall clock, then write."""
        self.account()
        self.write()
