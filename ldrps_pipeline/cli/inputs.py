"""From the command's inputs (files, folders, globs) to the list of jobs: each input file and the output file it
is restored into under OUTPUT_DIR, every conflict refused before any model loads.

The rules:

- a file is an input under its own name: ``OUTPUT_DIR/<stem><suffix>.<ext>``;
- a folder contributes the image files in it (``--recursive``: in its sub-folders too, which the outputs mirror),
  by extension (those Pillow reads), hidden files and folders left out, symlinked folders not followed;
- a glob (``'photos/**/*.jpg'``, quoted so that the command expands it) contributes what it matches, the outputs
  mirroring the folders below the glob's first wildcard;
- the suffix is ``--suffix``; without it, empty, unless an output would lie in its input's own folder (OUTPUT_DIR is
  the input folder): then ``_restored``, so that inputs are never replaced and the run goes ahead;
- a file found in a folder or by a glob that is itself an output of this run (from an earlier run: its name is a
  planned output, or it lies in OUTPUT_DIR and ends in the suffix and extension) is not an input; nor is
  anything under OUTPUT_DIR when OUTPUT_DIR is a sub-folder of a folder being scanned;
- refused: a named input that is missing, a glob that matches nothing, two inputs with one output name, an output
  name that is an input or a folder, and an output that would land outside OUTPUT_DIR (through ``..`` or a
  symlinked folder).
"""

import glob
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from ldrps_pipeline.cli.arguments import nearest_existing_folder

SUFFIX_BESIDE_INPUTS = "_restored"
"""The default suffix when outputs would lie beside their inputs."""

GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input file found from the command's inputs.

    Attributes:
        path: the file.
        relative: its output's place under OUTPUT_DIR, before the suffix and extension are applied.
        scanned: found in a folder or by a glob (so possibly an output of an earlier run), not named.
    """

    path: Path
    relative: Path
    scanned: bool


@dataclass(frozen=True)
class Job:
    """One image to restore: ``source`` into ``target``."""

    source: Path
    target: Path


def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) of the formats Pillow can open, plus TIFF's."""
    return frozenset(ext for ext, name in PIL.Image.registered_extensions().items() if name in PIL.Image.OPEN)


def find_inputs(arguments: Sequence[str | Path], *, recursive: bool, output_dir: Path) -> list[InputFile]:
    """The input files of the command's ``arguments``, in order, each once.

    Raises:
        ValueError: naming every argument that is neither a file, a folder nor a glob that matches.
    """
    found: list[InputFile] = []
    problems: list[str] = []
    extensions = image_extensions()
    for argument in map(str, arguments):
        path = Path(argument)
        if path.is_file():
            found.append(InputFile(path, Path(path.name), scanned=False))
        elif path.is_dir():
            found += _scan(path, path, recursive, output_dir, extensions)
        elif GLOB_CHARACTERS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                problems.append(f"{argument} (a glob that matches nothing)")
            base = _glob_base(argument)
            for match in map(Path, matches):
                if match.is_dir():
                    found += _scan(match, base, recursive, output_dir, extensions)
                elif match.is_file():
                    found.append(InputFile(match, match.relative_to(base), scanned=True))
        else:
            problems.append(argument)
    if problems:
        raise ValueError(f"input files not found: {', '.join(problems)}")
    unique: dict[Path, InputFile] = {}
    for item in found:
        unique.setdefault(item.path.resolve(), item)
    return list(unique.values())


def _scan(folder: Path, base: Path, recursive: bool, output_dir: Path, extensions: frozenset[str]) -> list[InputFile]:
    """The image files in ``folder`` (and below it, ``recursive``), placed relative to ``base``."""
    skipped = output_dir.resolve()
    files = []
    for root, folders, names in os.walk(folder):  # symlinked folders are listed, not followed
        root_path = Path(root)
        folders[:] = sorted(
            f for f in folders if recursive and not f.startswith(".") and (root_path / f).resolve() != skipped
        )
        for name in sorted(names):
            path = root_path / name
            if not name.startswith(".") and path.suffix.lower() in extensions and path.is_file():
                files.append(InputFile(path, path.relative_to(base), scanned=True))
    return files


def _glob_base(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard: the outputs mirror what lies below it."""
    parts = Path(pattern).parts
    plain = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    return Path(*parts[:plain]) if plain else Path(".")


def plan_jobs(
    inputs: Sequence[InputFile], output_dir: Path, *, extension: str, suffix: str | None
) -> tuple[list[Job], str]:
    """The jobs of ``inputs`` and the suffix in effect (see the module's rules).

    Raises:
        ValueError: for any conflict, before anything runs.
    """
    if suffix is None:
        beside = any((output_dir / item.relative).parent.resolve() == item.path.parent.resolve() for item in inputs)
        suffix = SUFFIX_BESIDE_INPUTS if beside else ""
    targets = [output_dir / _output_name(item.relative, suffix, extension) for item in inputs]
    planned = {target.resolve() for target in targets}
    outputs_root = output_dir.resolve()
    ending = f"{suffix}.{extension}"
    jobs: list[Job] = []
    for item, target in zip(inputs, targets, strict=True):
        resolved = item.path.resolve()
        earlier_output = resolved in planned or (
            suffix != "" and resolved.is_relative_to(outputs_root) and resolved.name.endswith(ending)
        )
        if item.scanned and earlier_output:
            continue
        jobs.append(Job(item.path, target))
    sources = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target.resolve() in sources:
            raise ValueError(f"{job.target} is an input file; choose another --suffix or output folder")
        if job.target in seen:
            raise ValueError(f"{seen[job.target]} and {job.source} would both be written to {job.target}")
        seen[job.target] = job.source
        if job.target.is_dir():
            raise ValueError(f"{job.target} is a folder; move it or choose another output folder")
        check_inside(job.target, output_dir)
    return jobs, suffix


def _output_name(relative: Path, suffix: str, extension: str) -> Path:
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"output name {relative} would escape the output folder")
    return relative.with_name(f"{relative.stem}{suffix}.{extension}")


def check_inside(target: Path, output_dir: Path) -> None:
    """Raise ``ValueError`` when writing ``target`` would leave ``output_dir``: through a symlinked folder on the
    way, or because ``target`` itself is a symlink (it would be replaced, not followed, but is never ours)."""
    if target.is_symlink():
        raise ValueError(f"{target} is a symlink; outputs are never written over links")
    if not target.parent.resolve().is_relative_to(output_dir.resolve()):
        raise ValueError(f"{target} would be written outside {output_dir} (through a symlinked folder)")


def check_writable_folder(folder: Path) -> None:
    """Raise ``ValueError`` naming ``folder`` unless files can be created in it: the folder, or the nearest of its
    ancestors that exists (where it will be created), takes a test file. Nothing is created for good."""
    try:
        existing = nearest_existing_folder(folder)
    except ValueError as error:
        raise ValueError(f"{error}; choose another output folder") from None
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"output folder {folder} cannot be written ({existing}: {error.strerror})") from None
