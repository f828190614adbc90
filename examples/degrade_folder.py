"""Make degraded / clean pairs from a folder of clean images, for ``ldrps-benchmark --pairs`` (e.g. Kodak24 with
Gaussian noise of sigma 30, as in the paper).

    python examples/degrade_folder.py kodak24 kodak24-noise30 --degradation noise --resize 256
    ldrps-benchmark --pairs kodak24-noise30/noise kodak24-noise30/clean --preset denoise --seeds 20 --label Kodak24

Writes ``OUTPUT_DIR/clean/<name>.png`` (the clean image, resized first when ``--resize`` is given, so that the noise
is that of the scored size) and ``OUTPUT_DIR/<degradation>/<name>.png``, the degraded image as an 8-bit PNG. The
degradations are those of :mod:`ldrps_pipeline.evaluation.degradations` (``noise`` is ``GaussianNoise(sigma=30)``,
clamped to [0, 1]); each image is degraded with the seed ``--seed`` plus its index in name order, so the same
folder always gives the same pairs.
"""

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ldrps_pipeline.evaluation.degradations import BENCHMARK_DEGRADATIONS, bicubic_resize, get_degradation
from ldrps_pipeline.evaluation.paired_images import images_by_stem, read_image


def to_pil(image: torch.Tensor) -> PIL.Image.Image:
    """A (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB image."""
    return PIL.Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def degrade_folder(
    clean_dir: Path, output_dir: Path, degradation: str = "noise", resize: int | None = None, seed: int = 0
) -> list[str]:
    """Write the pairs of every image of ``clean_dir`` into ``output_dir``; returns their names.

    Raises:
        ValueError: when ``clean_dir`` is not a folder of images with distinct names, or ``output_dir`` already holds
            pairs.
    """
    inputs = images_by_stem(clean_dir, "clean")
    clean_out, degraded_out = output_dir / "clean", output_dir / degradation
    for folder in (clean_out, degraded_out):
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty; choose a new output folder")
        folder.mkdir(parents=True, exist_ok=True)
    for index, (name, path) in enumerate(inputs.items()):
        clean = read_image(path)  # upright (EXIF orientation), RGB
        if resize is not None:
            clean = bicubic_resize(clean, (resize, resize))
        clean = (clean * 255).round() / 255  # the clean PNG's own values, so the pair is degraded from what is scored
        to_pil(clean).save(clean_out / f"{name}.png")
        to_pil(get_degradation(degradation)(clean, seed + index)).save(degraded_out / f"{name}.png")
    return list(inputs)


def main(argv: list[str] | None = None) -> int:
    """``degrade_folder.py CLEAN_DIR OUTPUT_DIR [--degradation noise] [--resize N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clean_dir", type=Path, help="the folder of clean images")
    parser.add_argument("output_dir", type=Path, help="where clean/ and <degradation>/ are written")
    parser.add_argument("--degradation", choices=list(BENCHMARK_DEGRADATIONS), default="noise", help="default: noise")
    parser.add_argument("--resize", type=int, default=None, help="resize the clean images to NxN first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    args = parser.parse_args(argv)
    if args.resize is not None and args.resize < 16:
        parser.error(f"--resize must be >= 16, got {args.resize}")
    try:
        names = degrade_folder(args.clean_dir, args.output_dir, args.degradation, args.resize, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f"{len(names)} pairs in {args.output_dir / 'clean'} and {args.output_dir / args.degradation}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
