"""Train the project's own small latent diffusion model (the demo model) from photos that need no download.

One seeded, resumable command trains, in diffusers format, on random crops of the training photos
(``ldrps_pipeline.demo_training.training_photos``: the packaged ones, and with ``--training-photos
packaged+debian`` 15 Creative Commons photos of two Debian packages):

1. an ``AutoencoderKL`` (``--vae-latent-channels`` latent channels, downsampling factor 4) with an
   L1 + MSE + tiny-KL loss; its ``scaling_factor`` is then set to 1 / (measured std of the latents);
2. the perceptual features (``PerceptualFeatures``, VGG16's first two blocks at small widths), distilled
   from the VAE encoder's first block: the demo model's stand-in for VGG16, so that the perceptual terms
   of every preset run;
3. a ``UNet2DConditionModel`` with cross-attention (epsilon prediction, Stable Diffusion's
   scaled-linear noise schedule) jointly with a small ``CLIPTextModel`` and the byte-level
   CLIP tokenizer, on captions of the photos, with the caption dropped (replaced by "") with
   probability 0.15 for classifier-free guidance. The UNet and text encoder that are saved are
   an exponential moving average (EMA) of the trained weights.

Each phase runs for a wall-clock budget (``--vae-minutes``, ``--perceptual-minutes``, ``--unet-minutes``) or a
step count,
with AdamW, linear warm-up and cosine decay driven by the fraction of the budget used, and a final
part of each phase at a higher crop size (``--hires-size``). Checkpoints are written under
``--work-dir``; re-running the same command continues where it stopped. The training curve goes
to ``<work-dir>/training_log.json``. The work dir is the resume state of one machine; ``--init-from FOLDER``
starts every network from a saved demo model instead (fresh optimisers and schedules), so that short runs on
machines that do not keep their files (a lent GPU) accumulate through the committed
``ldrps_pipeline/demo_model``. ``--phases`` trains only the phases it names and takes the other networks unchanged
from ``--init-from`` (``--phases perceptual`` adds the perceptual features to a model saved without them). At the
end the VAE's reconstruction PSNR on held-out 128x128 crops (``ldrps_pipeline.evaluation.photos.heldout_crops``)
is measured, and ``--output`` receives ``vae/``, ``unet/``, ``text_encoder/``, ``perceptual/``, ``tokenizer/``,
``scheduler/`` (safetensors) and a ``README.md``.

Presets: ``--preset cpu`` (default) completes in under 60 minutes on a 2-core CPU;
``--preset gpu`` uses larger widths, batches and crops for one CUDA GPU, in about 10 minutes.
Every preset value can be overridden by its own option.

On a CPU shared with other processes, set ``OMP_WAIT_POLICY=PASSIVE`` in the shell: with OpenMP's
default spinning wait, torch's threads slow down up to tenfold there (measured: 20 s instead of 3 s per
VAE step). OpenMP reads the variable when torch is first imported, so it must be set before Python
starts; setting it from inside the command would come too late.

Example::

    OMP_WAIT_POLICY=PASSIVE ldrps-train-demo --output ldrps_pipeline/demo_model --work-dir runs/demo
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ldrps_pipeline.demo_training.presets import PRESETS
from ldrps_pipeline.demo_training.training import PHASE_PARTS, PHASES, train
from ldrps_pipeline.demo_training.training_photos import PHOTO_SOURCES

__all__ = ["build_parser", "main", "parse_args"]

OMP_HINT = (
    "On a CPU shared with other processes, start the command with OMP_WAIT_POLICY=PASSIVE in its environment "
    "(e.g. `OMP_WAIT_POLICY=PASSIVE ldrps-train-demo ...`): OpenMP's default spinning wait can slow torch's "
    "threads down tenfold there, and OpenMP reads the variable only when torch is first imported."
)


def _name_tuple(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(" ", "").split(",") if part)


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _name_tuple(text))


def _check_phases(args: argparse.Namespace) -> None:
    """Refuse a ``--phases`` list that names unknown phases, or whose left-out networks cannot be taken unchanged,
    and an ``--output`` that would overwrite the ``--init-from`` model.

    Raises:
        SystemExit: naming the problem.
    """
    if args.init_from is not None and args.output.resolve() == args.init_from.resolve():
        raise SystemExit("--output is the --init-from folder: the run would overwrite the model it starts from")
    unknown = [phase for phase in args.phases if phase not in PHASES]
    if unknown or not args.phases:
        raise SystemExit(f"--phases {','.join(args.phases)!r}: choose one or more of {','.join(PHASES)}")
    kept = [phase for phase in PHASES if phase not in args.phases]
    if not kept:
        return
    if "vae" in args.phases:
        raise SystemExit(
            f"--phases {','.join(args.phases)}: a run that trains the VAE must also train {' and '.join(kept)} "
            "(they learn from the VAE's features and latents)"
        )
    if args.init_from is None:
        raise SystemExit(
            f"--phases leaves out {', '.join(kept)}: their networks come unchanged from --init-from FOLDER"
        )
    missing = [part for phase in kept for part in PHASE_PARTS[phase] if not (args.init_from / part).is_dir()]
    if missing:
        raise SystemExit(f"--init-from {args.init_from} has no {', '.join(f'{m}/' for m in missing)} to take unchanged")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``ldrps-train-demo``."""
    parser = argparse.ArgumentParser(
        prog="ldrps-train-demo",
        description="Train the small demo latent diffusion model (VAE, UNet, text encoder) from packaged "
        "photos. Resumable: re-run the same command to continue.",
        epilog=OMP_HINT,
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the diffusers-format model")
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for checkpoints and logs")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="default sizes and budgets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights of this saved demo model (e.g. ldrps_pipeline/demo_model) instead of random "
        "ones, with fresh optimisers: training accumulates across machines whose work dirs are lost",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="training compute precision (weights stay fp32); auto: bf16 autocast where the hardware has "
        "native bf16 (CUDA, or CPUs with AVX512-BF16/AMX), else fp32",
    )
    group = parser.add_argument_group("budgets (a phase ends at whichever limit comes first)")
    group.add_argument("--vae-minutes", type=float, help="wall-clock minutes of VAE training")
    group.add_argument("--perceptual-minutes", type=float, help="wall-clock minutes of perceptual-feature training")
    group.add_argument("--unet-minutes", type=float, help="wall-clock minutes of UNet + text encoder training")
    group.add_argument("--vae-steps", type=int, default=0, help="step limit of the VAE phase (0: none)")
    group.add_argument("--perceptual-steps", type=int, default=0, help="step limit of the perceptual phase (0: none)")
    group.add_argument("--unet-steps", type=int, default=0, help="step limit of the UNet phase (0: none)")
    group.add_argument(
        "--phases",
        type=_name_tuple,
        default=PHASES,
        help="the phases to train, comma-separated (default: vae,perceptual,unet); the networks of the others are "
        "taken unchanged from --init-from (for example perceptual alone, to add the perceptual features to a "
        "model saved before that phase existed)",
    )
    group = parser.add_argument_group("sizes")
    group.add_argument("--vae-channels", type=_int_tuple, help="3 comma-separated block widths")
    group.add_argument("--vae-layers", type=int, help="resnet layers per VAE block")
    group.add_argument("--vae-norm-groups", type=int)
    group.add_argument("--vae-latent-channels", type=int, help="latent channels of the VAE (= UNet input channels)")
    group.add_argument("--perceptual-channels", type=_int_tuple, help="2 comma-separated widths of the VGG blocks")
    group.add_argument("--unet-channels", type=_int_tuple, help="3 comma-separated block widths")
    group.add_argument("--unet-layers", type=int, help="resnet layers per UNet block")
    group.add_argument("--unet-norm-groups", type=int)
    group.add_argument("--unet-heads", type=int, help="attention heads of the UNet")
    group.add_argument("--text-hidden", type=int, help="text encoder width (= UNet cross-attention dim)")
    group.add_argument("--text-layers", type=int)
    group.add_argument("--text-heads", type=int)
    group.add_argument("--max-mb", type=float, default=40.0, help="limit on all weights together (1e6 bytes)")
    group = parser.add_argument_group("data and optimisation")
    group.add_argument(
        "--training-photos",
        choices=PHOTO_SOURCES,
        help="packaged: the 9 photos of scikit-image, scikit-learn and matplotlib; packaged+debian: and 15 "
        "Creative Commons photos of the Debian packages lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04",
    )
    group.add_argument(
        "--debian-photo-root",
        type=Path,
        default=Path("/"),
        help="folder holding usr/share/backgrounds with the Debian photos (default /, where apt installs them; "
        "elsewhere a folder of `dpkg-deb -x` extractions of the two packages)",
    )
    group.add_argument("--crop-size", type=int, help="training crop size in pixels (multiple of 16)")
    group.add_argument("--hires-size", type=int, help="crop size of the final part of each phase")
    group.add_argument("--hires-fraction", type=float, help="fraction of each phase at --hires-size (0: off)")
    group.add_argument("--vae-batch", type=int, help="VAE batch at --crop-size (divided by the area ratio at hires)")
    group.add_argument("--unet-batch", type=int, help="UNet batch at --crop-size (same rule)")
    group.add_argument("--vae-lr", type=float)
    group.add_argument("--unet-lr", type=float)
    group.add_argument("--warmup", type=float, default=0.03, help="warm-up fraction of each phase")
    group.add_argument("--kl-weight", type=float, default=1e-6)
    group.add_argument("--text-dropout", type=float, default=0.15, help="probability of the empty caption")
    group.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting (0: plain MSE)")
    group.add_argument("--ema-decay", type=float, default=0.999)
    group.add_argument("--latent-bank", type=int, help="pre-encoded training crops for the UNet phase")
    group.add_argument("--crop-scale-min", type=float, default=0.5, help="smallest crop side / shorter side")
    group = parser.add_argument_group("logging and checkpoints")
    group.add_argument("--log-every", type=int, default=25, help="steps per logged loss")
    group.add_argument("--checkpoint-minutes", type=float, default=4.0)
    group.add_argument("--eval-crops", type=int, default=4, help="held-out 128x128 crops per photo for PSNR")
    group.add_argument(
        "--stop-after-steps",
        type=int,
        default=0,
        help="stop (after a checkpoint) once this many steps ran in this invocation; for testing resumption",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse options and fill the unset ones from the preset."""
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.vae_channels = tuple(args.vae_channels)
    args.unet_channels = tuple(args.unet_channels)
    args.perceptual_channels = tuple(args.perceptual_channels)
    if len(args.vae_channels) != 3 or len(args.unet_channels) != 3:
        raise SystemExit("--vae-channels and --unet-channels need exactly 3 values")
    if len(args.perceptual_channels) != 2:
        raise SystemExit("--perceptual-channels needs exactly 2 values")
    for size in (args.crop_size, args.hires_size):
        if size % 16:
            raise SystemExit("crop sizes must be multiples of 16")
    _check_phases(args)
    args.command = " ".join(shlex.quote(a) for a in ["ldrps-train-demo", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``ldrps-train-demo``."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
