"""Atomic writes (ldrps_pipeline/cli/atomic_files.py): the final name only ever holds a complete file, even when
the writer is interrupted or killed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ldrps_pipeline.cli import atomic_files
from ldrps_pipeline.cli.atomic_files import partial_files, remove_partial_files, write_atomically


def test_writes_the_whole_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "a[1].png"
    write_atomically(target, b"new")
    write_atomically(target, b"newer")
    assert target.read_bytes() == b"newer" and os.listdir(tmp_path) == ["a[1].png"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_files.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.png"]


def test_a_writer_killed_mid_write_leaves_no_partial_file_under_the_final_name(tmp_path):
    target = tmp_path / "a.png"
    # The child writes half the bytes, says so, and waits to be killed (SIGKILL: no clean-up can run).
    script = textwrap.dedent(
        f"""
        import importlib.util, time
        from pathlib import Path

        # The module alone (standard library only), without the package and its torch import.
        spec = importlib.util.spec_from_file_location("atomic_files", {atomic_files.__file__!r})
        atomic_files = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic_files)

        def stalled_fsync(fd):
            print("writing", flush=True)
            time.sleep(600)

        atomic_files.os.fsync = stalled_fsync
        atomic_files.write_atomically(Path({str(target)!r}), b"x" * 100_000)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not target.exists()
    leftovers = partial_files(target)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".a.png.")
    remove_partial_files(target)  # what the next run does before writing a.png
    assert os.listdir(tmp_path) == []
