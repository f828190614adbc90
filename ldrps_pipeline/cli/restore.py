"""``ldrps-restore INPUT... -o OUTPUT_DIR``: restore image files and folders of them with LD-RPS.

Inputs are files, folders (``--recursive`` for their sub-folders) and globs; each is restored into OUTPUT_DIR,
mirroring sub-folders, as ``<name><suffix>.<ext>``. Outputs are written atomically and existing ones are skipped,
so running the same command again does only what is left; inputs are never modified. A manifest records every
image (JSON Lines). An image that fails is named with its cause on one line and the run goes on; the exit status
is 1 if any failed. Bad options are refused before the model loads (exit status 2). ``accelerate launch`` or
``--num-processes N`` spreads the images over several processes, one device each.
"""

import argparse
import contextlib
import sys
from collections import Counter
from pathlib import Path

import PIL.Image
import torch
from accelerate import PartialState

from ldrps_pipeline.captioning_ldrps import captioner_on
from ldrps_pipeline.cli.arguments import (
    SEED_RANGE,
    add_model_arguments,
    checked_model_and_device,
    float_in,
    int_in,
    model_loading_options,
    silenced_libraries,
)
from ldrps_pipeline.cli.folder_run import OutputOptions, RunContext, StopRequest, record_skipped, run_jobs, summary
from ldrps_pipeline.cli.image_writing import OUTPUT_EXTENSIONS
from ldrps_pipeline.cli.inputs import Job, check_writable_folder, find_inputs, plan_jobs
from ldrps_pipeline.cli.manifest import (
    DEFAULT_MANIFEST_NAME,
    ManifestWriter,
    leftover_parts,
    merge_parts,
    part_path,
    read_records,
)
from ldrps_pipeline.cli.processes import (
    launch,
    launched_by_num_processes,
    launched_processes,
    new_run_id,
    process_state,
    run_id,
)
from ldrps_pipeline.cli.restoration import RestorationOptions, check_caption_settings, check_pass_plan
from ldrps_pipeline.hub.loading import load_pipeline
from ldrps_pipeline.operators_ldrps import OPERATORS
from ldrps_pipeline.scheduling_ldrps import PRESETS

DEFAULT_MAX_PIXELS = 2048 * 2048
"""The default ``--max-pixels``: about a 4-megapixel photo."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldrps-restore``."""
    parser = argparse.ArgumentParser(prog="ldrps-restore", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or quoted globs ('photos/**/*.jpg')")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the restored images")
    add_model_arguments(parser)
    parser.add_argument("--recursive", action="store_true", help="also restore the images in sub-folders")
    parser.add_argument("--ext", choices=OUTPUT_EXTENSIONS, default="png", help="output format (default png)")
    parser.add_argument(
        "--suffix",
        default=None,
        help="added to each output's name (default: none, or _restored when outputs would lie beside the inputs)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help=f"the JSON Lines record (default: OUTPUT_DIR/{DEFAULT_MANIFEST_NAME})",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="per-task settings, or fast (one sample, 50 + 25 steps)"
    )
    parser.add_argument(
        "--operator",
        choices=sorted(OPERATORS),
        default=None,
        help="known-operator mode: this known degradation in place of the learned alignment network (identity for "
        "noise; the parameters of ldrps-benchmark's degradations)",
    )
    parser.add_argument(
        "--steps", type=int_in(1), default=None, help="DDIM steps of pass 0 (default: preset's; 450, fast 50)"
    )
    parser.add_argument("--recurrences", type=int_in(0), default=None, help="passes after pass 0 (default: preset's)")
    parser.add_argument(
        "--strength",
        type=float_in(0, 1, above_minimum=True),
        default=None,
        help="re-noising strength in (0, 1] (default: preset's)",
    )
    parser.add_argument(
        "--guidance-scale", type=float_in(0), default=8.0, help="classifier-free guidance scale (default 8)"
    )
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0, help="random seed of every image (default 0)")
    parser.add_argument("--prompt", default=None, help="describe the clean image (skips the captioner)")
    parser.add_argument(
        "--keep-gray",
        action="store_true",
        help="write gray inputs back as gray images (default: colourised, the paper's reading of a gray photo)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int_in(1, PIL.Image.MAX_IMAGE_PIXELS),
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger inputs (default {DEFAULT_MAX_PIXELS}; at most Pillow's decompression-bomb limit)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the models that every step runs (for a GPU and many images: the first image of each "
        "size pays for the compilation)",
    )
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="less device memory, more time: the VAE decoder in tiles and with gradient checkpointing, one UNet row "
        "per call (for large images on a small card)",
    )
    parser.add_argument(
        "--num-processes",
        type=int_in(1),
        default=1,
        help="spread the images over N processes, one device each (runs accelerate launch; default 1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="restore again images whose output exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages (errors still print)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ldrps-restore``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    launched = launched_processes()
    if launched > 1 and args.num_processes not in (1, launched):
        parser.error(f"--num-processes {args.num_processes} inside a launch of {launched} processes")
    if launched > 1 and args.device not in (None, "cpu", "cuda"):
        parser.error(f"--device {args.device}: with several processes each uses its own device; give cpu or cuda")
    if args.prompt is not None and args.captioner not in (None, "none"):
        parser.error("--captioner is not used with --prompt (the prompt is given); give one of them")
    device = checked_model_and_device(parser, args.model, args.device)
    if args.num_processes > 1 and device.type == "cuda" and args.num_processes > torch.cuda.device_count():
        parser.error(
            f"--num-processes {args.num_processes}: one CUDA device per process, and this machine has "
            f"{torch.cuda.device_count()} (use accelerate config for several machines)"
        )
    manifest = args.manifest or args.output_dir / DEFAULT_MANIFEST_NAME
    try:
        jobs = planned_jobs(args, manifest)
    except ValueError as error:
        print(f"ldrps-restore: error: {error}", file=sys.stderr)
        return 2
    if args.num_processes > 1 and launched == 1:
        return launched_run_status(argv, args.num_processes, manifest, len(jobs))
    state = process_state(args.device)
    if state.num_processes > 1:
        device = state.device
    try:
        return restore_jobs(args, state, device, jobs, manifest)
    except KeyboardInterrupt:
        print("ldrps-restore: stopped; the manifest records what finished", file=sys.stderr)
        return 130


def planned_jobs(args: argparse.Namespace, manifest: Path) -> list[Job]:
    """The jobs of the command's inputs; ``ValueError`` for any conflict, an output folder or a manifest that
    cannot be written, before any model loads."""
    inputs = find_inputs(args.inputs, recursive=args.recursive, output_dir=args.output_dir)
    jobs, _ = plan_jobs(inputs, args.output_dir, extension=args.ext, suffix=args.suffix)
    check_writable_folder(args.output_dir)
    if manifest.is_dir():
        raise ValueError(f"--manifest {manifest} is a folder; give the path of a file")
    check_writable_folder(manifest.parent)
    return jobs


def restore_jobs(
    args: argparse.Namespace, state: PartialState, device: torch.device, jobs: list[Job], manifest: Path
) -> int:
    """This process's part of the run: the jobs whose outputs are missing, split between the processes."""
    run = run_id(state)
    multi = state.num_processes > 1
    writer = ManifestWriter(part_path(manifest, state.process_index) if multi else manifest)
    if state.is_main_process:
        merge_parts(manifest, leftover_parts(manifest))  # from a killed multi-process run
    pending: list[Job] = []
    existing: list[Job] = []
    for job in jobs:
        (existing if job.target.exists() and not args.overwrite else pending).append(job)
    state.wait_for_everyone()  # every process has planned before any output is written: one split for all
    context = RunContext(run, state.process_index, str(device), args.preset)
    options = RestorationOptions(
        preset=args.preset,
        operator=args.operator,
        steps=args.steps,
        recurrences=args.recurrences,
        strength=args.strength,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        prompt=args.prompt,
        low_memory=args.low_memory,
    )
    outputs = OutputOptions(args.output_dir, args.ext, args.keep_gray, args.max_pixels)
    show_progress = not args.quiet and state.is_local_main_process
    with silenced_libraries() if args.quiet else contextlib.nullcontext():
        try:
            loading = model_loading_options(args, device)
            if args.prompt is not None:
                loading["captioner"] = "none"  # the prompt is given: no caption is asked for
            pipe = load_pipeline(args.model, **loading).to(device)
            check_pass_plan(pipe, options)
            check_caption_settings(pipe)
        except (OSError, ValueError) as error:
            print(f"ldrps-restore: error: {error}", file=sys.stderr)
            return 2
        pipe.set_progress_bar_config(disable=not show_progress, leave=False, position=1, desc="steps")
        if args.low_memory:
            pipe.vae.enable_tiling()
            pipe.vae.enable_gradient_checkpointing()
        if args.compile:
            pipe.enable_torch_compile()
        if state.is_main_process:
            record_skipped(existing, context, writer)
        # The captioner crosses to the device once for the run (once per image with --low-memory).
        captioner_stays = pipe.captioner is not None and not args.low_memory
        captioner_block = captioner_on(pipe.captioner, device) if captioner_stays else contextlib.nullcontext()
        with state.split_between_processes(pending) as share, StopRequest() as stop, captioner_block:
            counts = run_jobs(
                pipe,
                share,
                options=options,
                outputs=outputs,
                context=context,
                manifest=writer,
                stop=stop,
                show_progress=show_progress,
                quiet=args.quiet,
                skipped=len(existing) if state.is_main_process else 0,
            )
    state.wait_for_everyone()
    if multi and state.is_main_process:
        merge_parts(
            manifest, [p for p in map(lambda i: part_path(manifest, i), range(state.num_processes)) if p.exists()]
        )
    if state.is_main_process:
        totals = run_counts(manifest, run)
        if not args.quiet:
            print(summary(totals, manifest))
        if multi and not launched_by_num_processes() and (totals["failed"] or totals["interrupted"]):
            print(raw_launch_failures(totals, manifest), file=sys.stderr)
    if multi:
        # Under a launcher (torch elastic), a process that exits non-zero makes it print a traceback of its own, and no
        # option of accelerate launch or torchrun silences it: the processes of a multi-process run exit 0; the
        # summary, the manifest and --num-processes's exit status tell what failed.
        return 0
    if stop:
        return 128 + stop.signal_number
    return 1 if counts["failed"] else 0


def raw_launch_failures(totals: Counter, manifest: Path) -> str:
    """The error line that ends a run of ``accelerate launch`` (or ``torchrun``) in which images failed or were
    interrupted: its processes exit 0 all the same."""
    parts = [f"{totals[status]} {status}" for status in ("failed", "interrupted") if totals[status]]
    return (
        f"ldrps-restore: error: {', '.join(parts)} (manifest: {manifest}); the processes of a launch exit 0 all the "
        "same, so that the launcher prints no traceback: ldrps-restore --num-processes N gives the exit status"
    )


def run_counts(manifest: Path, run: str) -> Counter:
    """How many records of each status the run ``run`` left in ``manifest``."""
    return Counter(record["status"] for record in read_records(manifest) if record.get("run") == run)


def launched_run_status(argv: list[str], num_processes: int, manifest: Path, num_jobs: int) -> int:
    """Run the command in ``num_processes`` processes; the exit status a single process would give (130 for a
    run that stopped before every image was handled)."""
    run = new_run_id()
    status = launch(argv, num_processes, run)
    counts = run_counts(manifest, run)
    unfinished = counts["done"] + counts["skipped"] + counts["failed"] < num_jobs
    if counts["interrupted"] or (status == 0 and unfinished):
        return 130  # a launcher stopped by a signal exits 1 after its own report of it
    if status != 0:
        return status
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
