"""``ldrps-benchmark``: PSNR and SSIM of LD-RPS and classical baselines on degraded held-out crops, or, with
``--pairs DEGRADED_DIR CLEAN_DIR``, PSNR, SSIM and LPIPS of LD-RPS on your own image pairs
(:mod:`~ldrps_pipeline.evaluation.paired_images`).

Every chosen benchmark degradation (:data:`~ldrps_pipeline.evaluation.degradations.BENCHMARK_DEGRADATIONS`) is
applied to square crops of the held-out photos (:data:`~ldrps_pipeline.evaluation.photos.HELDOUT_PHOTOS`), with
a seed derived from the degradation's and the crop's names (the same crop is always degraded the
same way, whatever else is benchmarked). Each degraded crop is then scored (PSNR on RGB, SSIM on Y)
for these methods:

- ``input``: the degraded image itself;
- ``ldrps-default``: LD-RPS with the task-blind preset ``"default"``;
- ``ldrps-<preset>``: LD-RPS with the task preset, where one applies (:data:`TASK_PRESETS`);
- ``ldrps-known-operator``: an oracle, preset ``"default"`` with the degradation's known operator in place of
  the learned alignment network (``Degradation.operator``: its deterministic part), where it has one (all but
  haze and rain);
- ``ldrps-guidance-off``: preset ``"default"`` with ``posterior_scale = 0``: the prior alone, which
  only sees the input through the captioner's prompt (without a captioner: an unconditional sample);
- the paper's ablations of ``ldrps-default``: ``ldrps-no-recurrence`` (pass 0 only) and, where the pipeline
  has a captioner, ``ldrps-no-prompt`` (the empty prompt; without a captioner ``ldrps-default`` already
  runs with it);
- the classical baselines of :func:`~ldrps_pipeline.evaluation.baselines.get_baselines`; an oracle (a baseline
  given the true degradation) is marked in the table.

LD-RPS runs once per seed, the deterministic methods once. The table gives, per degradation and
method, the mean over seeds of the mean over crops, and the standard deviation (``n - 1``) of those
per-seed means (0 for a deterministic method or a single seed). The JSON file holds every per-crop,
per-seed value, the summary and the configuration (model, steps, commit, machine).

LD-RPS gets the empty prompt unless the pipeline has a captioner, and the paper's CFG scale 8. With
the empty prompt and the empty negative prompt both CFG branches are the same, and the pipeline then
runs the UNet once per sample instead of twice (same result, half the cost).

Examples (the demo model on a 2-core CPU; a pipeline folder with SD 2.1, a captioner and VGG16 features for the
paper's benchmarks, as ``examples/ldrps_on_stable_diffusion.py --save`` writes)::

    ldrps-benchmark --size 64 --steps 100 --recurrences 1 --seeds 0 1 --json bench.json
    ldrps-benchmark --pairs lol/eval15/low lol/eval15/high --model sd21-ldrps --preset lowlight --seeds 20 \\
        --resize 256 --label LOLv1 --json lol.json
"""

import argparse
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor
from tqdm.auto import tqdm  # a dependency of huggingface_hub, so always installed with diffusers

from ldrps_pipeline.cli.arguments import (
    SEED_RANGE,
    add_model_arguments,
    checked_json_path,
    checked_model_and_device,
    float_in,
    int_in,
    model_loading_options,
    silenced_libraries,
)
from ldrps_pipeline.evaluation.baselines import get_baselines
from ldrps_pipeline.evaluation.degradations import BENCHMARK_DEGRADATIONS, get_degradation
from ldrps_pipeline.evaluation.methods import DEGRADED_INPUT, Method, evaluate_method, ldrps_method, restorations
from ldrps_pipeline.evaluation.paired_images import MIN_SIDE, PairsConfig, read_pairs, run_pairs_benchmark
from ldrps_pipeline.evaluation.photos import HELDOUT_PHOTOS, heldout_crops
from ldrps_pipeline.evaluation.results import BenchmarkResults, Record, environment, format_table, write_json
from ldrps_pipeline.hub.loading import load_pipeline, resolve_device
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import PRESETS, is_finite_number

TASK_PRESETS: Mapping[str, str] = MappingProxyType(
    {"noise": "denoise", "lowlight": "lowlight", "lowlight+noise": "lowlight", "haze": "dehaze"}
)
"""The LD-RPS task preset benchmarked for a degradation, where the reference code has one."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to benchmark.

    Args:
        model: the model name given to :func:`~ldrps_pipeline.hub.loading.load_pipeline` (``"demo"``).
        degradations: names of benchmark degradations, in table order.
        photos: held-out photos to crop.
        size: side of the square crops in pixels.
        crops_per_photo: crops per photo (see :func:`~ldrps_pipeline.evaluation.photos.heldout_crops`).
        steps: DDIM steps of LD-RPS's pass 0.
        recurrences: LD-RPS passes after pass 0; ``None``: each preset's own value.
        seeds: the LD-RPS seeds; every LD-RPS result is computed for each of them.
        posterior_scale: replaces the posterior scale (finite, >= 0) of every guided LD-RPS run;
            ``None``: the presets'.
        device: torch device for the pipeline; ``None``: CUDA if available, else CPU.
    """

    model: str = "demo"
    degradations: tuple[str, ...] = tuple(BENCHMARK_DEGRADATIONS)
    photos: tuple[str, ...] = HELDOUT_PHOTOS
    size: int = 128
    crops_per_photo: int = 1
    steps: int = 450
    recurrences: int | None = None
    seeds: tuple[int, ...] = (0,)
    posterior_scale: float | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        for name in self.degradations:
            get_degradation(name)  # raises ValueError for an unknown name
        unknown = [p for p in self.photos if p not in HELDOUT_PHOTOS]
        if unknown:
            raise ValueError(f"unknown held-out photos {unknown}; choose among {list(HELDOUT_PHOTOS)}")
        if not self.degradations or not self.photos or not self.seeds:
            raise ValueError("degradations, photos and seeds must each name at least one")
        if self.size < 16 or self.size % 4:
            raise ValueError(f"size must be a multiple of 4 (the x4 downsampling) and >= 16, got {self.size}")
        if self.crops_per_photo < 1 or self.steps < 1:
            raise ValueError("crops_per_photo and steps must be >= 1")
        if self.recurrences is not None and self.recurrences < 0:
            raise ValueError(f"recurrences must be >= 0, got {self.recurrences}")
        if self.posterior_scale is not None and not is_finite_number(self.posterior_scale):
            raise ValueError(f"posterior_scale must be a finite number >= 0, got {self.posterior_scale}")


@dataclass(frozen=True)
class Crop:
    """A clean benchmark image: a name (unique in a run, it seeds the degradations) and a (1, 3, H, W) tensor in [0, 1]."""

    name: str
    image: Tensor


def benchmark_crops(config: BenchmarkConfig) -> list[Crop]:
    """The held-out crops of ``config``, named ``"<photo>/<index>"``.

    The crops are those of ``heldout_crops(config.size, config.crops_per_photo)`` for the chosen
    photos, so a photo's crops do not depend on which other photos are chosen.
    """
    arrays = heldout_crops(size=config.size, count_per_photo=config.crops_per_photo)
    crops = []
    for photo_index, photo in enumerate(HELDOUT_PHOTOS):
        if photo not in config.photos:
            continue
        for index in range(config.crops_per_photo):
            array = arrays[photo_index * config.crops_per_photo + index]
            crops.append(Crop(f"{photo}/{index}", torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()))
    return crops


def degradation_seed(degradation: str, crop: str) -> int:
    """The seed that degrades ``crop`` with ``degradation``: stable across runs, machines and selections."""
    return zlib.crc32(f"{degradation}/{crop}".encode())


def methods_for(pipe: LDRPSPipeline, degradation: str, config: BenchmarkConfig) -> list[Method]:
    """The methods benchmarked on ``degradation``, in table order (see the module docstring)."""
    guided = {} if config.posterior_scale is None else {"posterior_scale": config.posterior_scale}
    presets = ["default"] + ([TASK_PRESETS[degradation]] if degradation in TASK_PRESETS else [])
    methods = [DEGRADED_INPUT]
    for preset in presets:
        posterior = pipe.posterior_scheduler.with_preset(preset, **guided)
        methods.append(ldrps_method(pipe, f"ldrps-{preset}", posterior, config.steps, config.recurrences))
    operator = get_degradation(degradation).operator
    if operator is not None:
        posterior = pipe.posterior_scheduler.with_preset("default", **guided)
        methods.append(
            ldrps_method(pipe, "ldrps-known-operator", posterior, config.steps, config.recurrences, operator)
        )
    prior_only = pipe.posterior_scheduler.with_preset("default", posterior_scale=0.0)
    methods.append(ldrps_method(pipe, "ldrps-guidance-off", prior_only, config.steps, config.recurrences))
    default = pipe.posterior_scheduler.with_preset("default", **guided)
    methods.append(ldrps_method(pipe, "ldrps-no-recurrence", default, config.steps, 0))
    if pipe.captioner is not None:
        methods.append(
            ldrps_method(pipe, "ldrps-no-prompt", default, config.steps, config.recurrences, empty_prompt=True)
        )
    for name, baseline in get_baselines(degradation):
        methods.append(Method(name, lambda degraded, seed, f=baseline: f(degraded), oracle="oracle" in name))
    return methods


def describe_run(config: BenchmarkConfig, crops: int) -> str:
    """The table's note on what was run."""
    recurrences = "per preset" if config.recurrences is None else config.recurrences
    return (
        f"{crops} crops, seeds {list(config.seeds)}, {config.steps} steps, recurrences {recurrences}; "
        "mean ± std over seeds of the mean over crops."
    )


def run_benchmark(
    config: BenchmarkConfig,
    pipe: LDRPSPipeline | None = None,
    crops: Sequence[Crop] | None = None,
    progress: bool = True,
) -> BenchmarkResults:
    """Degrade every crop with every degradation of ``config``, restore it with every method and score it.

    Args:
        config: what to benchmark.
        pipe: the LD-RPS pipeline; ``None`` loads ``config.model`` on ``config.device``.
        crops: the clean images; ``None``: :func:`benchmark_crops` of ``config``.
        progress: show a progress bar (one tick per restoration).

    Returns:
        The :class:`~ldrps_pipeline.evaluation.results.BenchmarkResults`; ``environment["seconds"]`` is the total
        run time.
    """
    start = time.perf_counter()
    if pipe is None:
        pipe = load_pipeline(config.model).to(resolve_device(config.device))
        pipe.set_progress_bar_config(disable=True)
    crops = benchmark_crops(config) if crops is None else crops
    results = BenchmarkResults(config=config, environment=environment(pipe))
    plan = [(degradation, methods_for(pipe, degradation, config)) for degradation in config.degradations]
    total = sum(restorations(methods, len(crops), config.seeds) for _, methods in plan)
    with tqdm(total=total, disable=not progress, unit="image", desc="ldrps-benchmark") as bar:
        for degradation, methods in plan:
            results.oracles.update(m.name for m in methods if m.oracle)
            for crop in crops:
                degraded = get_degradation(degradation)(crop.image, degradation_seed(degradation, crop.name))
                for method in methods:
                    bar.set_postfix_str(f"{degradation} {crop.name} {method.name}")
                    for score in evaluate_method(method, crop.image, degraded, config.seeds):
                        results.records.append(
                            Record(**asdict(score), degradation=degradation, method=method.name, image=crop.name)
                        )
                        bar.update()
    results.notes.append(describe_run(config, len(crops)))
    results.environment["seconds"] = round(time.perf_counter() - start, 1)
    return results


CROPS_OPTIONS = ("degradations", "photos", "size", "crops_per_photo", "posterior_scale")
"""The options of the held-out crops run (``None`` when not given)."""
PAIRS_OPTIONS = ("preset", "resize", "label")
"""The options that only ``--pairs`` takes (``None`` when not given)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldrps-benchmark``."""
    parser = argparse.ArgumentParser(prog="ldrps-benchmark", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--steps",
        type=int_in(1),
        default=None,
        help="DDIM steps of LD-RPS's pass 0 (default 450; --pairs: the preset's)",
    )
    parser.add_argument(
        "--recurrences", type=int_in(0), default=None, help="LD-RPS recurrences (default: each preset's)"
    )
    parser.add_argument("--seeds", type=int_in(*SEED_RANGE), nargs="+", default=[0], help="LD-RPS seeds (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT.json", help="write every value to this new file"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no library warnings")
    crops = parser.add_argument_group("the held-out crops (without --pairs)")
    crops.add_argument(
        "--degradations",
        nargs="+",
        choices=list(BENCHMARK_DEGRADATIONS),
        default=None,
        metavar="NAME",
        help=f"degradations to benchmark (default: all of {', '.join(BENCHMARK_DEGRADATIONS)})",
    )
    crops.add_argument(
        "--photos",
        nargs="+",
        choices=list(HELDOUT_PHOTOS),
        default=None,
        metavar="PHOTO",
        help=f"held-out photos to crop (default: all of {', '.join(HELDOUT_PHOTOS)})",
    )
    crops.add_argument(
        "--size", type=int_in(16), default=None, help="crop side in pixels, a multiple of 4 (default 128)"
    )
    crops.add_argument("--crops-per-photo", type=int_in(1), default=None, help="crops per photo (default 1)")
    crops.add_argument(
        "--posterior-scale",
        type=float_in(0),
        default=None,
        help="posterior scale (>= 0) of every guided LD-RPS run (default: the presets')",
    )
    pairs = parser.add_argument_group("your own pairs")
    pairs.add_argument(
        "--pairs",
        nargs=2,
        type=Path,
        default=None,
        metavar=("DEGRADED_DIR", "CLEAN_DIR"),
        help="score LD-RPS on the images of DEGRADED_DIR against those of CLEAN_DIR with the same file stem",
    )
    pairs.add_argument("--preset", choices=sorted(PRESETS), default=None, help="LD-RPS preset (default: default)")
    pairs.add_argument(
        "--resize",
        type=int_in(MIN_SIDE),
        default=None,
        metavar="N",
        help="restore and score both images of a pair at NxN, as the paper's 256x256 protocol (default: their own "
        "size, which must then be the same)",
    )
    pairs.add_argument("--label", default=None, help="the pairs' name in the table (default: DEGRADED_DIR's name)")
    return parser


def _given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]


def _pairs_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PairsConfig:
    given = _given(args, CROPS_OPTIONS)
    if given:
        parser.error(f"{', '.join(given)}: options of the held-out crops, not of --pairs")
    return PairsConfig(
        degraded_dir=str(args.pairs[0]),
        clean_dir=str(args.pairs[1]),
        model=args.model,
        preset=args.preset or "default",
        steps=args.steps,
        recurrences=args.recurrences,
        seeds=tuple(args.seeds),
        resize=args.resize,
        label=args.label,
        device=args.device,
    )


def _crops_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchmarkConfig:
    given = _given(args, PAIRS_OPTIONS)
    if given:
        parser.error(f"{', '.join(given)}: options of --pairs, not of the held-out crops")
    options = {name: getattr(args, name) for name in (*CROPS_OPTIONS, "steps") if getattr(args, name) is not None}
    for name in ("degradations", "photos"):
        if name in options:
            options[name] = tuple(options[name])
    return BenchmarkConfig(
        model=args.model, seeds=tuple(args.seeds), recurrences=args.recurrences, device=args.device, **options
    )


def _loaded_pipeline(args: argparse.Namespace, device: torch.device) -> LDRPSPipeline:
    """The command's model on ``device``, loaded with the options of ``add_model_arguments``."""
    pipe = load_pipeline(args.model, **model_loading_options(args, device)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    """Run ``ldrps-benchmark``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json is not None:
        checked_json_path(parser, args.json)
    device = checked_model_and_device(parser, args.model, args.device)
    try:
        if args.pairs is not None:
            config = _pairs_config(parser, args)
            try:
                pair_set = read_pairs(config)
            except (ValueError, OSError) as error:
                parser.error(f"argument --pairs: {error}")
            if pair_set.match.unmatched_message():
                print(f"ldrps-benchmark: warning: {pair_set.match.unmatched_message()}", file=sys.stderr)
            with silenced_libraries() if args.quiet else nullcontext():
                pipe = _loaded_pipeline(args, device)
                results = run_pairs_benchmark(config, pipe, pair_set=pair_set, progress=not args.quiet)
        else:
            config = _crops_config(parser, args)
            with silenced_libraries() if args.quiet else nullcontext():
                results = run_benchmark(config, _loaded_pipeline(args, device), progress=not args.quiet)
    except (ValueError, OSError) as error:
        print(f"ldrps-benchmark: error: {error}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json is not None:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
