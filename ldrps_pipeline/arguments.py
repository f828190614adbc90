"""Checks of command-line arguments, shared by the package's commands (``ldrps-restore``,
``ldrps-benchmark``, ``ldrps-speed-benchmark``): argparse number types with ranges, and the check that
an output file is new."""

import argparse
import math
from collections.abc import Callable
from pathlib import Path

SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds ``torch.Generator.manual_seed`` accepts."""


def int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[minimum, maximum]`` (no upper bound for ``None``)."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def float_in(minimum: float, maximum: float | None = None, *, above_minimum: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``minimum`` (excluded if ``above_minimum``) to ``maximum``
    (no upper bound for ``None``)."""
    if maximum is None:
        expected = f"a finite number {'>' if above_minimum else '>='} {minimum:g}"
    else:
        expected = f"a finite number in {'(' if above_minimum else '['}{minimum:g}, {maximum:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        too_low = value <= minimum if above_minimum else value < minimum
        if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def check_new_file(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless :func:`write_json` can create it: nothing is there yet
    (not a file, a folder or a link) and its nearest existing ancestor is a folder."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of a new file")
    if path.exists() or path.is_symlink():
        raise ValueError(f"{path} exists; give the path of a new file (an existing one is never overwritten)")
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"{path} cannot be created: {ancestor} is a file, not a folder")
