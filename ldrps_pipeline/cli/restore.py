"""``ldrps-restore INPUT... -o OUTPUT_DIR``: restore image files with LD-RPS.

Each input is restored into OUTPUT_DIR under its own name (as PNG). The command never writes
over an input, refuses two inputs that would land on the same output name, and does not
replace an existing output unless ``--overwrite`` is given. Bad options are refused before the
model loads (exit status 2); running out of device memory stops with a one-line error naming the
options that need less memory (exit status 1), keeping the images already restored.
"""

import argparse
import contextlib
import sys
from pathlib import Path

import PIL.Image
import torch

from ldrps_pipeline.cli.arguments import SEED_RANGE, checked_model_and_device, float_in, int_in, silenced_libraries
from ldrps_pipeline.hub.loading import DTYPE_CHOICES, load_pipeline, resolve_dtype
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import PRESETS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldrps-restore``."""
    parser = argparse.ArgumentParser(prog="ldrps-restore", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="image files to restore")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the restored images")
    parser.add_argument("--model", default="demo", help="'demo', a local folder or a Hub id (default: demo)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="per-task settings, or fast (one sample, 50 + 25 steps)"
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
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0, help="random seed (default 0)")
    parser.add_argument("--prompt", default=None, help="describe the clean image (skips the captioner)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights' dtype (default auto: bfloat16 on a CUDA card that supports it, else float32)",
    )
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
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return parser


def plan_outputs(inputs: list[Path], output_dir: Path, overwrite: bool) -> list[Path]:
    """The output path of every input; raises ``ValueError`` for any conflict before anything runs."""
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise ValueError(f"input files not found: {', '.join(missing)}")
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, not a folder; choose another output folder")
    outputs = [output_dir / f"{p.stem}.png" for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, outputs, strict=True):
        if target.resolve() in resolved_inputs:
            raise ValueError(f"{target} is an input file; choose another output folder")
        if target in seen:
            raise ValueError(f"{seen[target]} and {source} would both be written to {target}")
        seen[target] = source
        if target.is_dir():
            raise ValueError(f"{target} is a folder; move it or choose another output folder")
        if target.exists() and not overwrite:
            raise ValueError(f"{target} exists; pass --overwrite to replace it")
    return outputs


def out_of_memory_advice(args: argparse.Namespace, pipe: LDRPSPipeline, image: PIL.Image.Image) -> str:
    """What to say when restoring ``image`` ran out of device memory: its size, and the options not yet given
    that need less memory."""
    options = [] if args.low_memory else ["--low-memory"]
    if pipe.unet.dtype == torch.float32 and pipe.device.type == "cuda":
        options.append("--dtype bfloat16")
    if args.preset != "fast":
        options.append("--preset fast (one sample, fewer steps)")
    advice = ", ".join(options) if options else "a smaller image"
    return f"out of device memory restoring {image.width}x{image.height} px; what needs less memory: {advice}"


def main(argv: list[str] | None = None) -> int:
    """Run ``ldrps-restore``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = checked_model_and_device(parser, args.model, args.device)
    try:
        outputs = plan_outputs(args.inputs, args.output_dir, args.overwrite)
        images = [PIL.Image.open(p).convert("RGB") for p in args.inputs]
    except (ValueError, OSError) as error:
        print(f"ldrps-restore: error: {error}", file=sys.stderr)
        return 2
    with silenced_libraries() if args.quiet else contextlib.nullcontext():
        try:
            pipe = load_pipeline(args.model, dtype=resolve_dtype(args.dtype, device)).to(device)
        except OSError as error:
            print(f"ldrps-restore: error: {error}", file=sys.stderr)
            return 2
        pipe.set_progress_bar_config(disable=args.quiet)
        if args.low_memory:
            pipe.vae.enable_tiling()
            pipe.vae.enable_gradient_checkpointing()
        if args.compile:
            pipe.enable_torch_compile()
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for source, target, image in zip(args.inputs, outputs, images, strict=True):
            try:
                result = pipe(
                    image,
                    prompt=args.prompt,
                    num_inference_steps=args.steps,
                    recurrences=args.recurrences,
                    strength=args.strength,
                    guidance_scale=args.guidance_scale,
                    preset=args.preset,
                    generator=torch.Generator().manual_seed(args.seed),
                    unet_batch_size=1 if args.low_memory else None,
                )
            except ValueError as error:
                print(f"ldrps-restore: error: {source}: {error}", file=sys.stderr)
                return 2
            except torch.OutOfMemoryError:
                print(f"ldrps-restore: error: {source}: {out_of_memory_advice(args, pipe, image)}", file=sys.stderr)
                return 1
            result.images[0].save(target)
            if not args.quiet:
                print(f"{source} -> {target}  (prompt: {result.prompts[0]!r})")
    return 0
