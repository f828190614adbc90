"""The trained demo model's output folder: a complete ``LDRPSPipeline`` in diffusers format and its README."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldrps_pipeline.demo_training.training_photos import DEBIAN_PHOTOS, DEBIAN_SHORT_SIDE
from ldrps_pipeline.evaluation.photos import HELDOUT_PHOTOS, TRAIN_PHOTOS
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG

__all__ = ["TRAINED_PARTS", "save_demo_pipeline", "weights_bytes", "write_readme"]

TRAINED_PARTS = ("vae", "unet", "text_encoder", "perceptual")
"""The pipeline's components that the training produces weights for."""


def save_demo_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, perceptual: Any, output: Path) -> None:
    """Save the trained networks as a complete ``LDRPSPipeline`` folder (default aligner and posterior scheduler)."""
    from diffusers import DDIMScheduler

    from ldrps_pipeline.alignment_ldrps import AlignmentModule
    from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
    from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler

    pipeline = LDRPSPipeline(
        vae=vae.to("cpu", torch.float32),
        text_encoder=text_encoder.to("cpu", torch.float32),
        tokenizer=tokenizer,
        unet=unet.to("cpu", torch.float32),
        scheduler=DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG),
        aligner=AlignmentModule(),
        posterior_scheduler=RecurrentPosteriorScheduler(),
        perceptual=perceptual.to("cpu", torch.float32),
    )
    pipeline.save_pretrained(output, safe_serialization=True)


def weights_bytes(output: Path) -> int:
    """Bytes of the trained parts' safetensors in a saved pipeline folder."""
    return sum(p.stat().st_size for part in TRAINED_PARTS for p in (output / part).rglob("*.safetensors"))


def _debian_photo_lines() -> list[str]:
    """The README's lines that name each Debian photo's source, author and licence."""
    lines = [
        f"- and {len(DEBIAN_PHOTOS)} photos of Debian packages, reduced to a shorter side of {DEBIAN_SHORT_SIDE} px "
        "(`ldrps_pipeline.demo_training.training_photos`; licences and authors as in "
        "`/usr/share/doc/<package>/copyright`):"
    ]
    lines += [
        f"  - {photo.name}: `{photo.path}` of {photo.package}, by {photo.author}, {photo.licence}"
        for photo in DEBIAN_PHOTOS
    ]
    return lines


def _curve_lines(log: dict[str, Any], rows: int = 6) -> list[str]:
    """A markdown table of ``rows`` evenly spaced entries of each phase's curve (step, minutes, size, metrics)."""
    lines = ["| phase | step | minutes | crop | loss | training-batch PSNR (dB) |", "|---|---|---|---|---|---|"]
    for phase in ("vae", "perceptual", "unet"):
        entries = log.get(phase, [])
        picks = sorted({round(i * (len(entries) - 1) / (rows - 1)) for i in range(rows)}) if entries else []
        for entry in (entries[i] for i in picks):
            psnr = entry.get("train_psnr", "-")
            lines.append(
                f"| {phase} | {entry['step']} | {entry['minutes']} | {entry['size']} | {entry['loss']} | {psnr} |"
            )
    return [*lines, ""]


def _final_mean(entries: list[dict[str, Any]], key: str = "loss") -> float | None:
    """Mean of ``key`` over the last 4 log entries (None for an empty curve)."""
    values = [entry[key] for entry in entries[-4:]]
    return round(float(np.mean(values)), 5) if values else None


def _phase_lines(options: argparse.Namespace, trained: dict[str, str]) -> list[str]:
    """The README's line per phase: ``trained[phase]`` for the phases of ``--phases``, else where it came from."""
    names = {"vae": "VAE", "perceptual": "perceptual features", "unet": "UNet + text encoder"}
    return [
        trained[phase]
        if phase in options.phases
        else f"- {names[phase]}: not trained by this run (`--phases`), taken unchanged from `{options.init_from}`"
        for phase in trained
    ]


def write_readme(options: argparse.Namespace, log: dict[str, Any], sizes: dict[str, Any]) -> None:
    """Write ``<output>/README.md``: the command, data, models and training results of a finished run.

    Args:
        options: the parsed command-line options.
        log: the finished run's training-log record.
        sizes: parameter counts per part (``vae``, ``unet``, ``text_encoder``), ``bytes`` of the weights and the
            VAE's ``scaling_factor``.
    """
    machine = log["machine"]
    lines = [
        "# LD-RPS demo model",
        "",
        "A small latent diffusion model (VAE + UNet + CLIP text encoder + byte-level tokenizer + DDIM",
        "scheduler with Stable Diffusion's noise schedule) trained from scratch by",
        "`ldrps_pipeline.demo_training.command` on photos that need no download (below). It is a toy prior for",
        "tests and demonstrations, not a general image model. Its `perceptual` component is a small stand-in for",
        "VGG16's perceptual features (see Models), so that the perceptual terms of every preset run.",
        "",
        "## Command",
        "",
        "```",
        options.command,
        "```",
        "",
        f"Preset `{options.preset}`, seed {options.seed}. Resumable: the same command continues from the",
        "checkpoints in its `--work-dir`.",
        "",
        "## Data",
        "",
        f"- training photos (`--training-photos {options.training_photos}`): {', '.join(TRAIN_PHOTOS)} "
        "(scikit-image, scikit-learn, matplotlib: their packages' licences)",
        *(_debian_photo_lines() if options.training_photos == "packaged+debian" else []),
        f"- held out (never seen in training): {', '.join(HELDOUT_PHOTOS)}",
        f"- random square crops (side {options.crop_scale_min:g}-1 of the shorter side) resized to "
        f"{options.crop_size}px, the last {options.hires_fraction:.0%} of each phase at {options.hires_size}px; "
        "horizontal flips; brightness/contrast/saturation jitter of up to 10 %",
        "- captions from `ldrps_pipeline.evaluation.photos.CAPTIONS` and "
        "`ldrps_pipeline.demo_training.training_photos.DEBIAN_PHOTOS`, replaced by the empty caption with "
        f"probability {options.text_dropout:g}",
        "",
        "## Models",
        "",
        "| part | configuration | parameters |",
        "|---|---|---|",
        f"| vae | AutoencoderKL, blocks {list(options.vae_channels)}, {options.vae_layers} layers/block, "
        f"{options.vae_latent_channels} latent "
        f"channels, factor 4, scaling_factor {sizes['scaling_factor']:.5f} | {sizes['vae']:,} |",
        f"| unet | UNet2DConditionModel, blocks {list(options.unet_channels)}, {options.unet_layers} layer/block, "
        f"cross-attention dim {options.text_hidden}, epsilon prediction, EMA weights | {sizes['unet']:,} |",
        f"| text_encoder | CLIPTextModel, hidden {options.text_hidden}, {options.text_layers} layers, "
        f"77 positions, EMA weights | {sizes['text_encoder']:,} |",
        f"| perceptual | PerceptualFeatures (VGG16 `features[:9]` layout) at widths {list(options.perceptual_channels)}, "
        "distilled from the VAE encoder's first block: a stand-in for VGG16, not VGG16 | "
        f"{sizes['perceptual']:,} |",
        "| tokenizer | byte-level CLIPTokenizer (`ldrps_pipeline.demo_training.byte_tokenizer`), vocabulary 514 | - |",
        "| scheduler | DDIMScheduler, scaled-linear betas 0.00085-0.012, 1000 steps, leading spacing | - |",
        "",
        f"All weights (fp32 safetensors) together: {sizes['bytes'] / 1e6:.1f} MB.",
        "",
        "## Training",
        "",
        f"- machine: {machine['device']}, {machine['threads']} torch threads, {machine['platform']}, "
        f"torch {machine['torch']}, compute precision {machine['precision']}",
        *_phase_lines(
            options,
            {
                "vae": f"- VAE: {log.get('vae_steps')} steps in {log.get('vae_minutes')} min "
                f"(AdamW, peak lr {options.vae_lr:g}, L1 + MSE + {options.kl_weight:g} KL), "
                f"final loss {_final_mean(log['vae'])}, "
                f"final training-batch PSNR {_final_mean(log['vae'], 'train_psnr')} dB",
                "perceptual": f"- perceptual features: {log.get('perceptual_steps')} steps in "
                f"{log.get('perceptual_minutes')} min (AdamW, peak lr {options.vae_lr:g}, read-out error / target "
                f"variance), final loss {_final_mean(log['perceptual'])}",
                "unet": f"- UNet + text encoder: {log.get('unet_steps')} steps in {log.get('unet_minutes')} min "
                f"(AdamW, peak lr {options.unet_lr:g}, min-SNR gamma {options.snr_gamma:g}, "
                f"EMA {options.ema_decay:g}), final loss {_final_mean(log['unet'])}",
            },
        ),
        f"- total wall clock: {log.get('total_minutes')} min",
        f"- **VAE reconstruction PSNR on held-out 128x128 crops** ({options.eval_crops} per held-out photo, "
        f"`heldout_crops(128, {options.eval_crops}, seed=0)`): **{log.get('vae_heldout_psnr'):.2f} dB**",
        "",
        "The whole training curve is in `training_log.json` of the work dir; sampled here (each value the mean",
        "of one logging window):",
        "",
        *_curve_lines(log),
    ]
    (options.output / "README.md").write_text("\n".join(lines))
