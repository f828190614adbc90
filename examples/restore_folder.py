"""Restore every image of a folder with LD-RPS, from Python (the bundled demo model by default).

    python examples/restore_folder.py examples/images restored --preset denoise --steps 50 --recurrences 1

Each image is restored at its own size into OUTPUT_DIR as ``<name>.png``; an existing output is kept, not replaced.
The same in a few lines of your own::

    pipe = load_pipeline("demo")  # or LDRPSPipeline.from_pretrained(folder), or LDRPSPipeline.from_pipe(sd, ...)
    image = PIL.ImageOps.exif_transpose(PIL.Image.open(path)).convert("RGB")
    pipe(image, preset="denoise", generator=torch.Generator().manual_seed(0)).images[0].save(out)
"""

import argparse
from pathlib import Path

import PIL.Image
import PIL.ImageOps
import torch

from ldrps_pipeline import PRESETS, LDRPSPipeline
from ldrps_pipeline.evaluation.paired_images import images_by_stem
from ldrps_pipeline.hub.loading import load_pipeline, resolve_device


def restore_images(
    pipe: LDRPSPipeline,
    inputs: list[Path],
    output_dir: Path,
    *,
    preset: str | None = None,
    steps: int | None = None,
    recurrences: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """Restore each of ``inputs`` into ``output_dir`` as ``<name>.png``, keeping existing outputs; returns the files
    written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        target = output_dir / f"{path.stem}.png"
        if target.exists():
            print(f"{target} exists: kept")
            continue
        with PIL.Image.open(path) as opened:
            image = PIL.ImageOps.exif_transpose(opened).convert("RGB")
        result = pipe(
            image,
            preset=preset,
            num_inference_steps=steps,
            recurrences=recurrences,
            generator=torch.Generator().manual_seed(seed),
        )
        result.images[0].save(target)
        print(f"{path} -> {target}  (prompt: {result.prompts[0]!r})")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``restore_folder.py INPUT_DIR OUTPUT_DIR [--model demo] [--preset P] [--steps N] [--recurrences N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir", type=Path, help="the folder of images to restore")
    parser.add_argument("output_dir", type=Path, help="where the restored images go")
    parser.add_argument("--model", default="demo", help="'demo', an LD-RPS folder or Hub id, or an SD-family one")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="per-task settings (default: none)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps of pass 0 (default: the preset's)")
    parser.add_argument("--recurrences", type=int, default=None, help="passes after pass 0 (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    try:
        # the images by name (refused before the model loads: a missing or empty folder, 1.png beside 1.jpg)
        inputs = list(images_by_stem(args.input_dir, "input").values())
    except ValueError as error:
        parser.error(str(error))
    pipe = load_pipeline(args.model).to(resolve_device(args.device))
    restore_images(
        pipe,
        inputs,
        args.output_dir,
        preset=args.preset,
        steps=args.steps,
        recurrences=args.recurrences,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
