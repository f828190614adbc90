"""Files written whole or not at all: a killed run never leaves a half-written checkpoint or log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_torch", "write_json"]


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write to ``<path>.tmp``, then rename it over ``path`` (atomic on one file system)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    _replace(path, lambda tmp: torch.save(obj, tmp))


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    _replace(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))
