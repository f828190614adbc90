"""The run's manifest: one JSON object per line (JSON Lines) for every image a run handled, appended and flushed
to disk as each image ends, so that a killed run keeps the record of what it finished.

Runs append to the same manifest; the last record of an input is its state. In a run of several processes each
process writes its own part (``MANIFEST.part-<process index>``), and the main process appends the parts to the
manifest when all have finished, or, after a run that was killed, at the start of the next run.
"""

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_MANIFEST_NAME = "ldrps-manifest.jsonl"
"""The manifest's name in OUTPUT_DIR when ``--manifest`` is not given."""

STATUSES = ("done", "skipped", "failed", "interrupted")
"""A record's ``status``: restored and written; left alone because its output exists; failed (with a
``reason``); abandoned when the run was stopped (nothing written)."""


def part_path(manifest: Path, process_index: int) -> Path:
    """Where process ``process_index`` of a multi-process run writes its records."""
    return manifest.with_name(f"{manifest.name}.part-{process_index}")


def leftover_parts(manifest: Path) -> list[Path]:
    """The parts a killed multi-process run left beside ``manifest``, in process order."""
    if not manifest.parent.is_dir():
        return []
    parts = manifest.parent.glob(f"{manifest.name}.part-*")
    return sorted(
        (p for p in parts if p.name.rsplit("-", 1)[-1].isdigit()), key=lambda p: int(p.name.rsplit("-", 1)[-1])
    )


class ManifestWriter:
    """Appends records to one JSON Lines file, each written whole and flushed to disk before the next image."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (a JSON-serialisable mapping with a ``status`` among :data:`STATUSES`)."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"a manifest record's status must be one of {STATUSES}, got {record.get('status')!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())


def merge_parts(manifest: Path, parts: list[Path]) -> None:
    """Append the records of ``parts`` to ``manifest`` in order, then remove each part (a part is removed only
    once its records are in the manifest, flushed)."""
    for part in parts:
        records = part.read_text(encoding="utf-8")
        if records and not records.endswith("\n"):  # the last line of a killed process can be cut short
            records = records[: records.rfind("\n") + 1]
        if records:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with open(manifest, "a", encoding="utf-8") as file:
                file.write(records)
                file.flush()
                os.fsync(file.fileno())
        part.unlink()


def read_records(manifest: Path) -> Iterator[dict[str, Any]]:
    """The records of ``manifest``, oldest first (a last line cut short by a kill is left out)."""
    with contextlib.suppress(FileNotFoundError), open(manifest, encoding="utf-8") as file:
        for line in file:
            if line.endswith("\n"):
                yield json.loads(line)
