"""Files written whole or not at all: a killed run never leaves a half-written checkpoint or log.

Both writers serialise in memory and hand the bytes to :func:`ldrps_pipeline.cli.atomic_files.write_atomically`
(a temporary file in the same folder, flushed, then renamed over the final name), the command line's writer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ldrps_pipeline.cli.atomic_files import write_atomically

__all__ = ["save_torch", "write_json"]


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, buffer.getvalue())


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_atomically(path, json.dumps(obj, indent=1).encode())
