"""``ldrps-benchmark``: PSNR and SSIM of LD-RPS and classical baselines on degraded held-out crops.

Every chosen benchmark degradation (:data:`~ldrps_pipeline.evaluation.degradations.BENCHMARK_DEGRADATIONS`) is
applied to square crops of the held-out photos (:data:`~ldrps_pipeline.evaluation.photos.HELDOUT_PHOTOS`), with
a seed derived from the degradation's and the crop's names (the same crop is always degraded the
same way, whatever else is benchmarked). Each degraded crop is then scored (PSNR on RGB, SSIM on Y)
for these methods:

- ``input``: the degraded image itself;
- ``ldrps-default``: LD-RPS with the task-blind preset ``"default"``;
- ``ldrps-<preset>``: LD-RPS with the task preset, where one applies (:data:`TASK_PRESETS`);
- ``ldrps-guidance-off``: preset ``"default"`` with ``posterior_scale = 0``: the prior alone, which
  only sees the input through the captioner's prompt (without a captioner: an unconditional sample);
- the classical baselines of :func:`~ldrps_pipeline.evaluation.baselines.get_baselines`; an oracle (a baseline
  given the true degradation) is marked in the table.

LD-RPS runs once per seed, the deterministic methods once. The table gives, per degradation and
method, the mean over seeds of the mean over crops, and the standard deviation (``n - 1``) of those
per-seed means (0 for a deterministic method or a single seed). The JSON file holds every per-crop,
per-seed value, the summary and the configuration (model, steps, commit, machine).

LD-RPS gets the empty prompt unless the pipeline has a captioner, and the paper's CFG scale 8. With
the empty prompt and the empty negative prompt both CFG branches are the same, and the pipeline then
runs the UNet once per sample instead of twice (same result, half the cost).

Example (the demo model on a 2-core CPU)::

    ldrps-benchmark --size 64 --steps 100 --recurrences 1 --seeds 0 1 --json bench.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm  # a dependency of huggingface_hub, so always installed with diffusers

from ldrps_pipeline.cli.arguments import (
    SEED_RANGE,
    checked_json_path,
    checked_model_and_device,
    float_in,
    int_in,
    silenced_libraries,
)
from ldrps_pipeline.evaluation.baselines import get_baselines
from ldrps_pipeline.evaluation.degradations import BENCHMARK_DEGRADATIONS, get_degradation
from ldrps_pipeline.evaluation.metrics import psnr, ssim_y
from ldrps_pipeline.evaluation.photos import HELDOUT_PHOTOS, heldout_crops
from ldrps_pipeline.evaluation.provenance import git_commit
from ldrps_pipeline.hub.loading import load_pipeline, resolve_device
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler, is_finite_number

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


@dataclass(frozen=True)
class Method:
    """A restoration method: ``restore(degraded, seed)`` returns the restored (1, 3, H, W) image.

    ``stochastic`` methods run once per seed; the others run once, with ``seed=None``.
    ``oracle`` marks a method that is given the true degradation.
    """

    name: str
    restore: Callable[[Tensor, int | None], Tensor]
    stochastic: bool = False
    oracle: bool = False


@dataclass(frozen=True)
class Score:
    """The scores of one restoration: PSNR (RGB, dB), SSIM (Y), and its run time in seconds."""

    seed: int | None
    psnr: float
    ssim_y: float
    seconds: float


@dataclass(frozen=True)
class Record:
    """One scored restoration of one degraded crop."""

    degradation: str
    method: str
    crop: str
    seed: int | None
    psnr: float
    ssim_y: float
    seconds: float


@dataclass(frozen=True)
class Summary:
    """One row of the table: mean and standard deviation over seeds of the per-seed means over crops."""

    degradation: str
    method: str
    oracle: bool
    psnr_mean: float
    psnr_std: float
    ssim_y_mean: float
    ssim_y_std: float
    crops: int
    seeds: int


@dataclass
class BenchmarkResults:
    """Everything a benchmark run measured, with the configuration and the environment it ran in."""

    config: BenchmarkConfig
    environment: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    oracles: set[str] = field(default_factory=set)

    def summary(self) -> list[Summary]:
        """One :class:`Summary` per (degradation, method), in the order they were measured."""
        groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for record in self.records:
            groups[record.degradation, record.method].append(record)
        rows = []
        for (degradation, method), records in groups.items():
            psnr_mean, psnr_std = _mean_std_over_seeds(records, "psnr")
            ssim_mean, ssim_std = _mean_std_over_seeds(records, "ssim_y")
            rows.append(
                Summary(
                    degradation=degradation,
                    method=method,
                    oracle=method in self.oracles,
                    psnr_mean=psnr_mean,
                    psnr_std=psnr_std,
                    ssim_y_mean=ssim_mean,
                    ssim_y_std=ssim_std,
                    crops=len({r.crop for r in records}),
                    seeds=len({r.seed for r in records}),
                )
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``config``, ``environment``, ``summary`` and every ``record``."""
        return {
            "config": asdict(self.config),
            "environment": self.environment,
            "summary": [asdict(row) for row in self.summary()],
            "records": [asdict(record) for record in self.records],
        }


def _mean_std_over_seeds(records: Sequence[Record], metric: str) -> tuple[float, float]:
    by_seed: dict[int | None, list[float]] = defaultdict(list)
    for record in records:
        by_seed[record.seed].append(getattr(record, metric))
    means = [statistics.fmean(values) for values in by_seed.values()]
    return statistics.fmean(means), statistics.stdev(means) if len(means) > 1 else 0.0


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


@contextmanager
def swapped_posterior_scheduler(pipe: LDRPSPipeline, posterior: RecurrentPosteriorScheduler) -> Iterator[None]:
    """Use ``posterior`` as the pipeline's posterior scheduler inside the ``with`` block, then restore the original."""
    original = pipe.posterior_scheduler
    pipe.posterior_scheduler = posterior
    try:
        yield
    finally:
        pipe.posterior_scheduler = original


def ldrps_method(
    pipe: LDRPSPipeline,
    name: str,
    posterior: RecurrentPosteriorScheduler,
    steps: int,
    recurrences: int | None,
) -> Method:
    """An LD-RPS :class:`Method` that runs ``pipe`` with the posterior scheduler ``posterior``.

    The prompt is ``""`` unless ``pipe`` has a captioner, which then writes it. ``pipe`` is left as
    it was after every call.
    """

    def restore(degraded: Tensor, seed: int | None) -> Tensor:
        captioned = pipe.captioner is not None
        with swapped_posterior_scheduler(pipe, posterior):
            output = pipe(
                degraded,
                prompt=None if captioned else "",
                num_inference_steps=steps,
                recurrences=recurrences,
                generator=torch.Generator().manual_seed(seed),
                output_type="pt",
            )
        return output.images.cpu()

    return Method(name, restore, stochastic=True)


def methods_for(pipe: LDRPSPipeline, degradation: str, config: BenchmarkConfig) -> list[Method]:
    """The methods benchmarked on ``degradation``, in table order (see the module docstring)."""
    guided = {} if config.posterior_scale is None else {"posterior_scale": config.posterior_scale}
    presets = ["default"] + ([TASK_PRESETS[degradation]] if degradation in TASK_PRESETS else [])
    methods = [Method("input", lambda degraded, seed: degraded)]
    for preset in presets:
        posterior = pipe.posterior_scheduler.with_preset(preset, **guided)
        methods.append(ldrps_method(pipe, f"ldrps-{preset}", posterior, config.steps, config.recurrences))
    prior_only = pipe.posterior_scheduler.with_preset("default", posterior_scale=0.0)
    methods.append(ldrps_method(pipe, "ldrps-guidance-off", prior_only, config.steps, config.recurrences))
    for name, baseline in get_baselines(degradation):
        methods.append(Method(name, lambda degraded, seed, f=baseline: f(degraded), oracle="oracle" in name))
    return methods


def evaluate_method(method: Method, clean: Tensor, degraded: Tensor, seeds: Sequence[int]) -> list[Score]:
    """Restore ``degraded`` with ``method`` (once per seed if it is stochastic) and score it against ``clean``."""
    scores = []
    for seed in seeds if method.stochastic else [None]:
        start = time.perf_counter()
        restored = method.restore(degraded, seed)
        seconds = time.perf_counter() - start
        scores.append(
            Score(
                seed=seed,
                psnr=float(psnr(restored, clean)[0]),
                ssim_y=float(ssim_y(restored, clean)[0]),
                seconds=seconds,
            )
        )
    return scores


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(pipe: LDRPSPipeline) -> dict[str, Any]:
    """The software and machine a benchmark runs on: commit, versions, CPU, threads and accelerator."""
    import diffusers

    device = pipe.device
    return {
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


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
        The :class:`BenchmarkResults`; ``environment["seconds"]`` is the total run time.
    """
    start = time.perf_counter()
    if pipe is None:
        pipe = load_pipeline(config.model).to(resolve_device(config.device))
        pipe.set_progress_bar_config(disable=True)
    crops = benchmark_crops(config) if crops is None else crops
    results = BenchmarkResults(config=config, environment=environment(pipe))
    plan = [(degradation, methods_for(pipe, degradation, config)) for degradation in config.degradations]
    total = sum(len(crops) * (len(config.seeds) if m.stochastic else 1) for _, methods in plan for m in methods)
    with tqdm(total=total, disable=not progress, unit="image", desc="ldrps-benchmark") as bar:
        for degradation, methods in plan:
            results.oracles.update(m.name for m in methods if m.oracle)
            for crop in crops:
                degraded = get_degradation(degradation)(crop.image, degradation_seed(degradation, crop.name))
                for method in methods:
                    bar.set_postfix_str(f"{degradation} {crop.name} {method.name}")
                    for score in evaluate_method(method, crop.image, degraded, config.seeds):
                        results.records.append(Record(degradation, method.name, crop.name, **asdict(score)))
                        bar.update()
    results.environment["seconds"] = round(time.perf_counter() - start, 1)
    return results


def format_table(results: BenchmarkResults) -> str:
    """A markdown table, one row per degradation and method, with PSNR and SSIM as ``mean ± std`` over seeds."""
    rows = results.summary()
    lines = ["| degradation | method | PSNR (dB) | SSIM (Y) |", "|---|---|---|---|"]
    for row in rows:
        label = f"{row.method} (oracle)" if row.oracle else row.method
        lines.append(
            f"| {row.degradation} | {label} | {row.psnr_mean:.2f} ± {row.psnr_std:.2f} "
            f"| {row.ssim_y_mean:.4f} ± {row.ssim_y_std:.4f} |"
        )
    config = results.config
    lines.append("")
    lines.append(
        f"{len({r.crop for r in results.records})} crops, seeds {list(config.seeds)}, "
        f"{config.steps} steps, recurrences {'per preset' if config.recurrences is None else config.recurrences}; "
        "mean ± std over seeds of the mean over crops."
    )
    if results.oracles:
        lines.append("(oracle): given the true degradation, not blind.")
    return "\n".join(lines)


def write_json(results: BenchmarkResults, path: Path) -> None:
    """Write ``results.to_json()`` to ``path``, a new file (parent folders are created).

    Raises:
        FileExistsError: when ``path`` exists; it is never overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x") as file:
        file.write(json.dumps(results.to_json(), indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldrps-benchmark``."""
    parser = argparse.ArgumentParser(prog="ldrps-benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="'demo', a local folder or a Hub id (default: demo)")
    parser.add_argument(
        "--degradations",
        nargs="+",
        choices=list(BENCHMARK_DEGRADATIONS),
        default=list(BENCHMARK_DEGRADATIONS),
        metavar="NAME",
        help=f"degradations to benchmark (default: all of {', '.join(BENCHMARK_DEGRADATIONS)})",
    )
    parser.add_argument(
        "--photos",
        nargs="+",
        choices=list(HELDOUT_PHOTOS),
        default=list(HELDOUT_PHOTOS),
        metavar="PHOTO",
        help=f"held-out photos to crop (default: all of {', '.join(HELDOUT_PHOTOS)})",
    )
    parser.add_argument(
        "--size", type=int_in(16), default=128, help="crop side in pixels, a multiple of 4 (default 128)"
    )
    parser.add_argument("--crops-per-photo", type=int_in(1), default=1, help="crops per photo (default 1)")
    parser.add_argument("--steps", type=int_in(1), default=450, help="DDIM steps of LD-RPS's pass 0 (default 450)")
    parser.add_argument(
        "--recurrences", type=int_in(0), default=None, help="LD-RPS recurrences (default: each preset's)"
    )
    parser.add_argument("--seeds", type=int_in(*SEED_RANGE), nargs="+", default=[0], help="LD-RPS seeds (default: 0)")
    parser.add_argument(
        "--posterior-scale",
        type=float_in(0),
        default=None,
        help="posterior scale (>= 0) of every guided LD-RPS run (default: the presets')",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT.json", help="write every value to this new file"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no library warnings")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ldrps-benchmark``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json is not None:
        checked_json_path(parser, args.json)
    checked_model_and_device(parser, args.model, args.device)
    try:
        config = BenchmarkConfig(
            model=args.model,
            degradations=tuple(args.degradations),
            photos=tuple(args.photos),
            size=args.size,
            crops_per_photo=args.crops_per_photo,
            steps=args.steps,
            recurrences=args.recurrences,
            seeds=tuple(args.seeds),
            posterior_scale=args.posterior_scale,
            device=args.device,
        )
        with silenced_libraries() if args.quiet else nullcontext():
            results = run_benchmark(config, progress=not args.quiet)
    except (ValueError, OSError) as error:
        print(f"ldrps-benchmark: error: {error}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json is not None:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
