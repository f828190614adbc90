"""Provenance of a measurement: the commit of the checkout the package runs from."""

import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with ``-dirty`` for local changes; ``None`` outside git."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None
