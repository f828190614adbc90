"""``ldrps-benchmark --pairs DEGRADED_DIR CLEAN_DIR``: LD-RPS on your own degraded / clean image pairs, such as
the paper's benchmarks (LOLv1, HSTS, Kodak24 with noise).

The files of the two folders pair by file stem (``1.png`` pairs with ``1.jpg``); files without a partner are
listed in a warning and left out. Each pair is scored (PSNR on RGB, SSIM on Y, and LPIPS (AlexNet) when ``lpips``
or ``pyiqa`` is installed, :mod:`~ldrps_pipeline.evaluation.lpips_metric`) for two methods: ``input``, the degraded
image itself, and ``ldrps-<preset>``, LD-RPS with the chosen preset over every seed. The images are scored at
their own size, where the clean image must have the degraded one's size, or both are resized to ``resize`` x
``resize`` first (bicubic, antialiased: the paper's 256x256 protocol). The table and the JSON file are those of
the held-out crops (:mod:`~ldrps_pipeline.evaluation.results`), with the pairs' label in the degradation column.

From Python, with a pipeline of your own (e.g. one built with ``LDRPSPipeline.from_pipe`` and a captioner)::

    results = run_pairs_benchmark(PairsConfig("lol/low", "lol/high", preset="lowlight", resize=256), pipe=pipe)
    print(format_table(results))
"""

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ldrps_pipeline.evaluation.degradations import bicubic_resize
from ldrps_pipeline.evaluation.lpips_metric import LPIPS_MISSING_NOTE, load_lpips
from ldrps_pipeline.evaluation.methods import DEGRADED_INPUT, evaluate_method, ldrps_method, restorations
from ldrps_pipeline.evaluation.results import BenchmarkResults, Record, environment
from ldrps_pipeline.hub.loading import load_pipeline, resolve_device
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import PRESETS

MIN_SIDE = 16
"""The smallest image side scored (SSIM's window is 11 pixels)."""

IMAGE_SUFFIXES = frozenset(
    suffix for suffix, image_format in PIL.Image.registered_extensions().items() if image_format in PIL.Image.OPEN
)
"""The file suffixes Pillow can read (lower case, with the dot); other files in the folders are ignored."""


@dataclass(frozen=True)
class PairsConfig:
    """What to benchmark on your own pairs.

    Args:
        degraded_dir: the folder of degraded images.
        clean_dir: the folder of their clean references, with the same file stems.
        model: the model name given to :func:`~ldrps_pipeline.hub.loading.load_pipeline` (``"demo"``).
        preset: the LD-RPS preset (a key of :data:`~ldrps_pipeline.scheduling_ldrps.PRESETS`).
        steps: DDIM steps of LD-RPS's pass 0; ``None``: the preset's.
        recurrences: LD-RPS passes after pass 0; ``None``: the preset's.
        seeds: the LD-RPS seeds; every image is restored once per seed.
        resize: score (and restore) both images of a pair at ``resize`` x ``resize``; ``None``: at their own size.
        label: the table's degradation column; ``None``: the degraded folder's name.
        device: torch device for the pipeline; ``None``: CUDA if available, else CPU.
    """

    degraded_dir: str
    clean_dir: str
    model: str = "demo"
    preset: str = "default"
    steps: int | None = None
    recurrences: int | None = None
    seeds: tuple[int, ...] = (0,)
    resize: int | None = None
    label: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.recurrences is not None and self.recurrences < 0:
            raise ValueError(f"recurrences must be >= 0, got {self.recurrences}")
        if self.resize is not None and self.resize < MIN_SIDE:
            raise ValueError(f"resize must be >= {MIN_SIDE}, got {self.resize}")

    @property
    def name(self) -> str:
        """The pairs' label in the table: ``label``, or the degraded folder's name."""
        return self.label or Path(self.degraded_dir).resolve().name


@dataclass(frozen=True)
class ImagePair:
    """A degraded and a clean image file that share the file stem ``name``."""

    name: str
    degraded: Path
    clean: Path


@dataclass(frozen=True)
class PairMatch:
    """The pairs of two folders, in name order, and the stems that found no partner in the other folder."""

    pairs: tuple[ImagePair, ...]
    unmatched_degraded: tuple[str, ...]
    unmatched_clean: tuple[str, ...]

    def unmatched_message(self) -> str | None:
        """A sentence listing the files that found no partner; ``None`` when every file found one."""
        parts = [
            f"{len(names)} {role} image(s) without a partner: {', '.join(names)}"
            for role, names in (("degraded", self.unmatched_degraded), ("clean", self.unmatched_clean))
            if names
        ]
        return "; ".join(parts) + " (left out)." if parts else None


@dataclass(frozen=True)
class PairImages:
    """The two images of a pair, each ``(1, 3, H, W)`` in [0, 1] and of one size."""

    name: str
    degraded: Tensor
    clean: Tensor


def images_by_stem(folder: Path, role: str) -> dict[str, Path]:
    """The image files of ``folder`` (not its subfolders; hidden files ignored) by file stem.

    Raises:
        ValueError: naming ``folder`` (the ``role`` folder) when it is missing, not a folder, holds no image, or holds
            two images with one stem.
    """
    if not folder.exists():
        raise ValueError(f"the {role} folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"the {role} folder {folder} is a file, not a folder")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in images:
            raise ValueError(
                f"the {role} folder holds two images named {path.stem!r}: {images[path.stem].name}, {path.name}"
            )
        images[path.stem] = path
    if not images:
        raise ValueError(f"the {role} folder {folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
    return images


def match_pairs(degraded_dir: str | Path, clean_dir: str | Path) -> PairMatch:
    """Pair the images of the two folders by file stem.

    Raises:
        ValueError: when a folder is missing, not a folder or empty (:func:`images_by_stem`), or when no stem is in
            both folders (the message gives a few names of each).
    """
    degraded = images_by_stem(Path(degraded_dir), "degraded")
    clean = images_by_stem(Path(clean_dir), "clean")
    names = sorted(degraded.keys() & clean.keys())
    if not names:
        raise ValueError(
            f"no file name is in both {degraded_dir} and {clean_dir} (pairs match by file stem): degraded "
            f"{', '.join(list(degraded)[:5])}{', ...' if len(degraded) > 5 else ''}; clean "
            f"{', '.join(list(clean)[:5])}{', ...' if len(clean) > 5 else ''}"
        )
    return PairMatch(
        pairs=tuple(ImagePair(name, degraded[name], clean[name]) for name in names),
        unmatched_degraded=tuple(sorted(degraded.keys() - clean.keys())),
        unmatched_clean=tuple(sorted(clean.keys() - degraded.keys())),
    )


def read_image(path: Path) -> Tensor:
    """An image file as a ``(1, 3, H, W)`` float tensor in [0, 1]: its EXIF orientation applied, converted to RGB.

    Raises:
        OSError: when Pillow cannot read ``path`` (its message names the file).
    """
    with PIL.Image.open(path) as image:
        rgb = PIL.ImageOps.exif_transpose(image).convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def read_pair(pair: ImagePair, resize: int | None) -> PairImages:
    """Read both images of ``pair``, resized to ``resize`` x ``resize`` when ``resize`` is given.

    Raises:
        ValueError: naming both files, when they differ in size and ``resize`` is ``None``, or when an image is
            smaller than :data:`MIN_SIDE` pixels.
    """
    degraded, clean = read_image(pair.degraded), read_image(pair.clean)
    if resize is not None:
        degraded, clean = (bicubic_resize(image, (resize, resize)) for image in (degraded, clean))
    elif degraded.shape != clean.shape:
        raise ValueError(
            f"{pair.clean} is {clean.shape[-1]}x{clean.shape[-2]} px but {pair.degraded} is "
            f"{degraded.shape[-1]}x{degraded.shape[-2]} px; give --resize N to score both at NxN"
        )
    if min(degraded.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"{pair.degraded} is smaller than {MIN_SIDE} px on a side; give --resize N")
    return PairImages(pair.name, degraded, clean)


@dataclass(frozen=True)
class PairSet:
    """The images of every pair of two folders, read and checked, and how the folders matched."""

    match: PairMatch
    images: tuple[PairImages, ...]


def read_pairs(config: PairsConfig) -> PairSet:
    """Match the folders of ``config`` and read every pair (:func:`match_pairs`, :func:`read_pair`), before any
    model loads; raises ``ValueError`` or ``OSError`` naming the problem."""
    match = match_pairs(config.degraded_dir, config.clean_dir)
    return PairSet(match, tuple(read_pair(pair, config.resize) for pair in match.pairs))


def describe_run(config: PairsConfig, pairs: int) -> str:
    """The table's note on what was run."""
    size = "at their own size" if config.resize is None else f"resized to {config.resize}x{config.resize}"
    steps = "the preset's" if config.steps is None else config.steps
    recurrences = "the preset's" if config.recurrences is None else config.recurrences
    return (
        f"{pairs} image pairs {size}, preset {config.preset}, seeds {list(config.seeds)}, steps {steps}, "
        f"recurrences {recurrences}; mean ± std over seeds of the mean over images."
    )


def run_pairs_benchmark(
    config: PairsConfig,
    pipe: LDRPSPipeline | None = None,
    pair_set: PairSet | None = None,
    progress: bool = True,
) -> BenchmarkResults:
    """Score the degraded images of ``config``'s pairs and their LD-RPS restorations against the clean ones.

    Args:
        config: what to benchmark.
        pipe: the LD-RPS pipeline; ``None`` loads ``config.model`` on ``config.device``.
        pair_set: the pairs, read beforehand; ``None``: :func:`read_pairs` of ``config`` (files without a partner
            are named in a warning).
        progress: show a progress bar (one tick per restoration).

    Returns:
        The :class:`~ldrps_pipeline.evaluation.results.BenchmarkResults`; ``environment["lpips"]`` names the LPIPS
        package (``None`` when LPIPS was left out), ``environment["seconds"]`` is the total run time.
    """
    start = time.perf_counter()
    if pair_set is None:
        pair_set = read_pairs(config)
        if pair_set.match.unmatched_message():
            warnings.warn(pair_set.match.unmatched_message(), stacklevel=2)
    if pipe is None:
        pipe = load_pipeline(config.model).to(resolve_device(config.device))
        pipe.set_progress_bar_config(disable=True)
    lpips = load_lpips(pipe.device)
    results = BenchmarkResults(config=config, environment=environment(pipe))
    results.environment["lpips"] = None if lpips is None else f"{lpips.package} (AlexNet)"
    posterior = pipe.posterior_scheduler.with_preset(config.preset)
    methods = [
        DEGRADED_INPUT,
        ldrps_method(pipe, f"ldrps-{config.preset}", posterior, config.steps, config.recurrences),
    ]
    total = restorations(methods, len(pair_set.images), config.seeds)
    with tqdm(total=total, disable=not progress, unit="image", desc="ldrps-benchmark --pairs") as bar:
        for pair in pair_set.images:
            for method in methods:
                bar.set_postfix_str(f"{pair.name} {method.name}")
                for score in evaluate_method(method, pair.clean, pair.degraded, config.seeds, lpips):
                    results.records.append(
                        Record(**asdict(score), degradation=config.name, method=method.name, image=pair.name)
                    )
                    bar.update()
    results.notes.append(describe_run(config, len(pair_set.images)))
    results.notes.append(LPIPS_MISSING_NOTE if lpips is None else f"LPIPS: AlexNet, computed by {lpips.package}.")
    if pair_set.match.unmatched_message():
        results.notes.append(pair_set.match.unmatched_message())
    results.environment["seconds"] = round(time.perf_counter() - start, 1)
    return results
