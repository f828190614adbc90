"""The loop over one process's share of the images: read one image, restore it, write it atomically, record it in
the manifest, show the progress; each failure is one line and the loop goes on; a stop signal abandons the image
in progress and ends the loop cleanly.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM lets the image in progress stop at its next step, discards it
(nothing is written for it) and records it as ``interrupted``; a second one stops at once, which leaves no
partial file either (the atomic write removes its temporary file).
"""

import contextlib
import hashlib
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm.auto import tqdm  # diffusers' progress bars are tqdm's too

from ldrps_pipeline.cli.atomic_files import remove_partial_files, write_atomically
from ldrps_pipeline.cli.image_files import ImageFileError, read_image
from ldrps_pipeline.cli.image_writing import encode_image
from ldrps_pipeline.cli.inputs import Job, check_inside
from ldrps_pipeline.cli.manifest import ManifestWriter
from ldrps_pipeline.cli.restoration import (
    RestorationError,
    RestorationInterrupted,
    RestorationOptions,
    restore_image,
)
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While entered, SIGINT and SIGTERM ask the run to stop (:attr:`signal_number` is the first one received);
    a second signal raises ``KeyboardInterrupt`` at once. The previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = number
        print(
            f"ldrps-restore: {signal.Signals(number).name}: stopping; the image in progress is abandoned "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> "StopRequest":
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class OutputOptions:
    """Where and how outputs are written: the ``output_dir`` they stay in, the file ``extension``, whether gray
    inputs stay gray, and the pixel limit of the inputs."""

    output_dir: Path
    extension: str = "png"
    keep_gray: bool = False
    max_pixels: int = 4096 * 1024


@dataclass(frozen=True)
class RunContext:
    """What every record of a run shares: the run's id, the process, its device and the preset."""

    run_id: str
    process_index: int
    device: str
    preset: str | None

    def record(self, job: Job, status: str, **fields: Any) -> dict[str, Any]:
        """A manifest record for ``job``."""
        return {
            "run": self.run_id,
            "input": str(job.source),
            "output": str(job.target),
            "status": status,
            **fields,
            "preset": self.preset,
            "device": self.device,
            "process": self.process_index,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def record_skipped(jobs: Sequence[Job], context: RunContext, manifest: ManifestWriter) -> None:
    """Record ``jobs``, whose outputs exist, as skipped."""
    for job in jobs:
        manifest.write(context.record(job, "skipped", reason="the output exists (--overwrite redoes it)"))


def run_jobs(
    pipe: LDRPSPipeline,
    jobs: Sequence[Job],
    *,
    options: RestorationOptions,
    outputs: OutputOptions,
    context: RunContext,
    manifest: ManifestWriter,
    stop: StopRequest,
    show_progress: bool,
    quiet: bool,
    skipped: int = 0,
) -> Counter:
    """Restore ``jobs`` in order until done or stopped; returns the count of each record status written."""
    counts: Counter = Counter(skipped=skipped)
    with tqdm(total=len(jobs), desc="images", unit="image", position=0, disable=not show_progress) as bar:
        bar.set_postfix(done=0, skipped=skipped, failed=0)
        for job in jobs:
            if stop:
                break
            started = time.monotonic()
            with _abandoned_on_interrupt(job, context, manifest, started):
                record = _run_job(pipe, job, options, outputs, context, stop)
            record["seconds"] = round(time.monotonic() - started, 3)
            manifest.write(record)
            counts[record["status"]] += 1
            if record["status"] == "failed":
                tqdm.write(f"ldrps-restore: error: {job.source}: {record['reason']}", file=sys.stderr)
            elif record["status"] == "done" and not quiet:
                tqdm.write(f"{job.source} -> {job.target}  (prompt: {record['prompt']!r})")
            bar.set_postfix(done=counts["done"], skipped=counts["skipped"], failed=counts["failed"], refresh=False)
            bar.update()
    return counts


@contextlib.contextmanager
def _abandoned_on_interrupt(job: Job, context: RunContext, manifest: ManifestWriter, started: float) -> Iterator[None]:
    """Record ``job`` as interrupted if a second stop signal (``KeyboardInterrupt``) ends it, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        seconds = round(time.monotonic() - started, 3)
        manifest.write(context.record(job, "interrupted", reason="stopped at once by a second signal", seconds=seconds))
        raise


def _run_job(
    pipe: LDRPSPipeline,
    job: Job,
    options: RestorationOptions,
    outputs: OutputOptions,
    context: RunContext,
    stop: StopRequest,
) -> dict[str, Any]:
    """Restore one job; the manifest record of how it went."""
    remove_partial_files(job.target)  # what a killed run left
    try:
        data = job.source.read_bytes()
    except OSError as error:
        return context.record(job, "failed", reason=f"cannot be read: {error.strerror or error}")
    checksum = hashlib.sha256(data).hexdigest()
    try:
        image = read_image(data, max_pixels=outputs.max_pixels)
    except ImageFileError as error:
        return context.record(job, "failed", reason=str(error), input_sha256=checksum)
    del data
    try:
        restored = restore_image(pipe, image, options, stop_requested=lambda: bool(stop))
    except RestorationInterrupted:
        signal_name = signal.Signals(stop.signal_number).name if stop else "a stop request"
        return context.record(job, "interrupted", reason=f"abandoned on {signal_name}", input_sha256=checksum)
    except RestorationError as error:
        return context.record(job, "failed", reason=str(error), input_sha256=checksum)
    gray = image.grayscale and outputs.keep_gray
    encoded, output_notes = encode_image(
        restored.rgb,
        extension=outputs.extension,
        alpha=image.alpha,
        gray=gray,
        precision=image.precision,
        icc_profile=image.icc_profile,
    )
    try:
        check_inside(job.target, outputs.output_dir)
        job.target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(job.target, encoded)
    except (OSError, ValueError) as error:
        reason = f"cannot write {job.target}: {getattr(error, 'strerror', None) or error}"
        return context.record(job, "failed", reason=reason, input_sha256=checksum)
    return context.record(
        job,
        "done",
        input_sha256=checksum,
        prompt=restored.prompt,
        seed=options.seed,
        settings={**restored.settings, "keep_gray": outputs.keep_gray, "extension": outputs.extension},
        size=list(image.size),
        precision=image.precision,
        grayscale_input=image.grayscale,
        retry=restored.retry,
        notes=[*image.notes, *output_notes],
    )


def summary(counts: Counter, manifest: Path) -> str:
    """The run's last line: how many images were done, skipped, failed and interrupted, and where the record is."""
    parts = [f"{counts[status]} {status}" for status in ("done", "skipped", "failed", "interrupted") if counts[status]]
    return f"ldrps-restore: {', '.join(parts) or 'nothing to do'} (manifest: {manifest})"
