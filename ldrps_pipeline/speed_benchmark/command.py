"""``ldrps-speed-benchmark``: seconds per image and peak memory of LD-RPS in several configurations, side by side.

Builds the real-size Stable Diffusion 2.1-base architecture (UNet ~866M parameters, the SD VAE, a
CLIP text encoder of SD 2.1's shape) from configs with random weights, so that it needs no download,
and restores one random smooth image in each configuration below, all in one run on one card, so
that every speed-up is a ratio measured on the same machine:

- ``reference``: the costs of the reference code (ALGORITHM.md, "Cost of the reference pattern"):
  float32 everything, the UNet called in batches of 2 rows (two calls per step instead of one; the
  reference calls it once per sample with its CFG pair, the same two batch-2 calls), and every
  sample decoded with a graph and backpropagated through the decoder at every step
  (:class:`~ldrps_pipeline.speed_benchmark.reference_cost.ReferenceCostPipeline`); 450 steps + 2
  recurrences at strength 0.5, 2 samples, CFG 8. The reference also holds two full copies of SD; that
  memory is not reproduced.
- ``reference-ieee``: ``reference`` with TF32 off for the convolutions too (PyTorch's default computes
  float32 convolutions in TF32 on the GPU): IEEE float32 everywhere, the most literal reading of "fp32".
- ``paper``: the same settings with the pipeline's defaults: bf16 where the card supports it, one
  batched UNet call per step (both samples, both CFG branches), the decoder backward only for the
  guided sample and only below the guidance gate.
- ``paper+vae-ckpt``: ``paper`` with gradient checkpointing in the VAE decoder (less memory, slower).
- ``paper+cudnn-autotune``: ``paper`` with ``torch.backends.cudnn.benchmark = True`` (cuDNN times its
  convolution algorithms for each new shape and keeps the fastest).
- ``paper+unet-channels-last``, ``paper+vae-channels-last``: ``paper`` with one model's weights in the
  channels_last memory format (its convolutions then run channels-last).
- ``paper+xformers``: ``paper`` with xformers' memory-efficient attention, only on CUDA when xformers is
  installed (every other row then switches it off and uses diffusers' default, SDPA).
- ``paper@1024``: ``paper`` on a 1024x1024 input (the decoder is tiled only if it would not fit).
- ``paper-50+1``: not measured separately: ``paper``'s per-step costs over ``fast``'s schedule, to
  separate what the shorter schedule saves from what the single sample saves.
- ``fast``: bf16, one sample (``num_samples=1``: sample 1 only ever fed the training of the
  alignment module), 50 steps + 1 recurrence at strength 0.5 (50 + 25 steps instead of 450 + 2 x 225).
- with ``--compile``: ``paper+compile``, ``fast+compile`` and ``paper+compile-small-networks``.

Only steps with ``t`` below the guidance gate (700) are guided (decoder backward); pass 0 of 450 steps
has 100 unguided steps, the recurrences none. A full run of every configuration would take far
longer than a lent GPU's lease, so each configuration runs a short pass-0 schedule chosen to have
``warmup + N/2`` unguided then ``warmup + N`` guided steps (``N = --steps-measured``); the seconds
of each kind of step are timed after a device synchronisation at every step end (the first
``warmup`` steps of each kind are discarded), and again free-running: ``N/2`` unguided and ``N``
guided steps back to back, synchronised only before and after them, the pace of a real restoration,
which does not wait for the card at every step end. The seconds per image are extrapolated with the
exact numbers of unguided and guided steps of the configuration's full schedule. A step's cost does
not depend on the timestep, only on whether it is guided (the exposure and colour terms below
t = 100 add a few pixel-wise operations). Fixed costs per image (prompt encoding, re-noising, the
final decode) are left out: together they cost less than one step. So is the alignment module's warm-up
(``aligner_warmup_steps``, off in the benchmark's pipelines): a no-op over the paper's 450 steps, it adds
once per image the training steps missing at the gate, 85 at ``fast``'s 50 steps (not timed here). Peak
memory is what the run allocated on the card, the weights of all components included.

The same run checks that every output is finite and restores one image in a short identical run
(``--check-steps`` steps, same seed) with ``reference``, with the default pipeline in float32 and
with ``paper``, and reports their differences: the reference pattern computes the same restoration.
With ``--compile`` it also compares the compiled run with ``paper``, and the compiled VAE decoder's
gradient at the image's latent size with eager's (cosine and norm ratio).

``paper``, ``paper+cudnn-autotune`` and the compiled ``paper`` rows also get their guided step profiled
with ``torch.profiler`` over the ranges the pipeline marks (:mod:`~ldrps_pipeline.speed_benchmark.profiling`):
each phase's host time and, on CUDA, its kernels' device time, the kernels' time per step against the step's
measured time (a step bound by the card, or by the host's launching of kernels), the costliest kernels, the
host's CUDA calls and any operation that waits for the card. ``paper``'s UNet and decoder are also timed
called directly, outside the pipeline.

Every row also gets the operations of its steps, counted once in a separate short run with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention, forward and
backward), and from them the operations per image and the achieved TFLOP/s: how far a configuration
is from the card's peak. Compiled and xformers rows do the same operations as their eager SDPA row,
which the counter cannot see inside compiled code, so they take that row's count.

Example (a CPU check with tiny models; on a GPU leave out ``--tiny``)::

    ldrps-speed-benchmark --tiny --steps-measured 2 --json speed.json
"""

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import is_xformers_available

from ldrps_pipeline.cli.arguments import checked_device, checked_json_path, int_in
from ldrps_pipeline.hub.loading import DTYPE_CHOICES, resolve_device, resolve_dtype
from ldrps_pipeline.speed_benchmark.report import environment, format_table, xformers_build
from ldrps_pipeline.speed_benchmark.rows import (
    Benchmark,
    channels_last_row,
    compiled_rows,
    cudnn_autotune_row,
    fast_row,
    float32_checks,
    large_input_row,
    paper_over_fast_schedule_row,
    paper_row,
    reference_ieee_row,
    reference_row,
    vae_checkpointing_row,
    xformers_row,
)
from ldrps_pipeline.speed_benchmark.specs import SD21_BASE, TINY, build_pipeline, smooth_image

OPTIONAL_ROWS = (
    "reference-ieee",
    "paper+vae-ckpt",
    "paper+cudnn-autotune",
    "paper+unet-channels-last",
    "paper+vae-channels-last",
    "paper+xformers",
    "paper@large",
    "paper+compile-small-networks",
)
"""The rows that ``--skip`` may leave out (no other row or check needs them)."""


def start_benchmark(
    args: argparse.Namespace, log: Callable[[str], None], save: Callable[[dict[str, Any]], None] | None
) -> Benchmark:
    """Build the components on the device and the test image: a run's :class:`Benchmark`, before any row."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    spec = TINY if args.tiny else SD21_BASE
    env = environment(device, args.commit)
    log(
        f"ldrps-speed-benchmark on {env['card']} ({device}) | torch {env['torch']} | diffusers {env['diffusers']} "
        f"| transformers {env['transformers']} | commit {env['commit'] or 'unknown'}"
    )
    pipe = build_pipeline(spec, device, args.seed)
    xformers = device.type == "cuda" and is_xformers_available()  # opt-in: only paper+xformers switches it on
    image_size = args.image_size or spec.image_size
    bench = Benchmark(
        args=args,
        pipe=pipe,
        image=smooth_image(image_size, args.seed),
        image_size=image_size,
        large_size=args.large_image_size or spec.large_image_size,
        half=resolve_dtype(args.dtype, device),
        env=env,
        log=log,
        save=save,
        started=started,
    )
    if xformers:
        bench.checks["xformers"] = xformers_build()
    log(
        f"{'tiny' if args.tiny else 'SD 2.1-base'} components, random weights: UNet "
        f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M parameters; images {image_size} and "
        f"{bench.large_size} px; built in {time.perf_counter() - started:.1f} s"
    )
    return bench


def run(
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the components, measure every configuration and run the checks; returns the JSON-ready results.

    ``save`` gets the results so far (``"complete": False``) after every row, so that a run cut short by
    its device lease still leaves every finished row behind, and the final results at the end.
    """
    bench = start_benchmark(args, log, save)
    wanted = set(OPTIONAL_ROWS) - set(args.skip)
    # float32 first: the reference pattern, and the comparison runs that need float32 weights.
    reference_row(bench)
    if "reference-ieee" in wanted:
        reference_ieee_row(bench)
    float32_checks(bench)
    paper = paper_row(bench)  # the shared pipeline is in the half dtype from here on
    if "paper+vae-ckpt" in wanted:
        vae_checkpointing_row(bench)
    if "paper+cudnn-autotune" in wanted:
        cudnn_autotune_row(bench)
    for model_name in ("unet", "vae"):
        if f"paper+{model_name}-channels-last" in wanted:
            channels_last_row(bench, model_name)
    if (
        "paper+xformers" in wanted and "xformers" in bench.checks
    ):  # recorded by start_benchmark() where xformers can run
        xformers_row(bench, paper)
    if "paper@large" in wanted:
        large_input_row(bench)
    paper_over_fast_schedule_row(bench, paper)
    fast = fast_row(bench)
    if args.compile is not None:
        compiled_rows(bench, paper, fast)
    return bench.finish()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``ldrps-speed-benchmark``."""
    parser = argparse.ArgumentParser(
        prog="ldrps-speed-benchmark",
        description="Seconds per image and peak memory of LD-RPS configurations, measured side by side (random weights).",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny components and images (a quick CPU check)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="dtype of every configuration but the reference (auto: bfloat16 where the card supports it)",
    )
    parser.add_argument("--steps-measured", type=int_in(1), default=30, help="guided steps timed per configuration")
    parser.add_argument("--warmup", type=int_in(1), default=2, help="steps of each kind run before timing (>= 1)")
    parser.add_argument(
        "--check-steps", type=int_in(1), default=10, help="steps of the short identical comparison runs"
    )
    parser.add_argument(
        "--breakdown-steps",
        type=int_in(1),
        default=6,
        help="guided steps of the profiled rows profiled phase by phase (UNet, decode, ...)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="test image side (default 512; tiny 32)")
    parser.add_argument("--large-image-size", type=int, default=None, help="large image side (default 1024; tiny 64)")
    parser.add_argument(
        "--compile",
        nargs="*",
        default=None,
        metavar="MODE",
        help="also time paper and fast with torch.compile of the UNet and the VAE decoder (pipe.enable_torch_compile), "
        "in the first MODE that works (failures are recorded; no MODE: 'default'; e.g. "
        "--compile reduce-overhead default); compilation time is reported apart",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        metavar="BACKEND",
        help="torch.compile's backend for --compile (default inductor; 'eager' checks dynamo's capture alone, fast)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=OPTIONAL_ROWS,
        default=[],
        metavar="ROW",
        help=f"leave out these rows, to fit a short device lease: any of {', '.join(OPTIONAL_ROWS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", default=None, help="commit to record when the checkout has no git metadata")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the results here (default: $OUT/speed.json when OUT is set)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON; exit status 1 when an output is not finite."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checked_device(parser, args.device)
    if args.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        parser.error(f"argument --compile-backend: {args.compile_backend!r} is not a torch.compile backend")
    path = args.json or (Path(os.environ["OUT"]) / "speed.json" if os.environ.get("OUT") else None)
    save = None
    if path is not None:
        checked_json_path(parser, path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def save(results: dict[str, Any]) -> None:
            # This run's own file, rewritten after every row.
            path.write_text(json.dumps(results, indent=2) + "\n")

    results = run(args, save=save)
    print(format_table(results), flush=True)
    if path is not None:
        print(f"wrote {path}", flush=True)
    return 0 if results["checks"]["all_outputs_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
