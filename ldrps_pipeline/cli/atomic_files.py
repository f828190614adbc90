"""Writing a file so that its final name only ever holds a complete file: the bytes go to a temporary file in
the same folder, which is flushed to disk and then renamed over the final name (one atomic step on POSIX and
Windows filesystems). A write that fails or is interrupted removes its temporary file; one killed outright
(SIGKILL, power loss) can leave it, and :func:`remove_partial_files` clears such leftovers on the next run."""

import contextlib
import glob
import os
import secrets
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
"""The end of a temporary file's name: ``.<final name>.<random>.partial``, hidden and never an image name."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder and a rename.

    Raises:
        OSError: when the folder cannot be written; nothing is left behind then.
    """
    # Not tempfile.mkstemp: its files are private (0600); this one gets the permissions of any new file (umask).
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # an interrupt or a kill signal turned into an exception leaves no partial file either
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def partial_files(path: Path) -> list[Path]:
    """The temporary files that writes of ``path`` left behind (after a kill)."""
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL_SUFFIX}"))


def remove_partial_files(path: Path) -> None:
    """Remove what :func:`partial_files` finds for ``path``."""
    for leftover in partial_files(path):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
