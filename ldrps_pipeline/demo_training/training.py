"""The whole resumable training run: both phases, the VAE's evaluation and the saved demo pipeline."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import torch

from ldrps_pipeline.demo_training.compute import Compute
from ldrps_pipeline.demo_training.data import PhotoCrops
from ldrps_pipeline.demo_training.demo_pipeline import save_demo_pipeline, weights_bytes, write_readme
from ldrps_pipeline.demo_training.models import check_weight_budget
from ldrps_pipeline.demo_training.phases import train_perceptual, train_unet, train_vae
from ldrps_pipeline.demo_training.presets import architecture
from ldrps_pipeline.demo_training.resumable_loop import StopRequested
from ldrps_pipeline.demo_training.training_log import TrainingLog
from ldrps_pipeline.demo_training.training_photos import training_photos
from ldrps_pipeline.demo_training.vae_evaluation import heldout_vae_psnr

__all__ = ["PHASES", "PHASE_PARTS", "train"]

PHASES = ("vae", "perceptual", "unet")
"""The training's phases, in their order; ``--phases`` names those a run trains (the others come from
``--init-from`` unchanged)."""

PHASE_PARTS = {"vae": ("vae",), "perceptual": ("perceptual",), "unet": ("unet", "text_encoder", "tokenizer")}
"""The saved model's folders that each phase produces (and a run without that phase takes unchanged)."""


def train(options: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) the whole training described by parsed ``options``, with ``options.threads`` torch
    threads (the caller's thread count is restored after it); returns the training-log record.

    Raises:
        SystemExit: if the models exceed ``--max-mb``, or the work dir holds a run with other model options.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, options.threads))
    try:
        return _train(options)
    finally:
        torch.set_num_threads(previous_threads)


def _train(options: argparse.Namespace) -> dict[str, Any]:
    """:func:`train`'s run, in the thread count it set."""
    compute = Compute.choose(options.device, options.precision)
    counts = check_weight_budget(options)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    log = TrainingLog.open(options.work_dir, architecture(options), counts)
    if log.record.get("done") and (options.output / "unet").exists():
        print(f"already finished; the model is in {options.output}", flush=True)
        return log.record
    device_name = compute.device_name()
    log.record["machine"] = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "precision": compute.precision,
    }
    log.record["command"] = options.command
    print(f"device {device_name}, precision {compute.precision}, parameters {counts}", flush=True)
    photos = training_photos(options.training_photos, options.debian_photo_root)
    crops = PhotoCrops(photos, compute.device, options.crop_scale_min)
    log.record["phases"] = list(options.phases)
    try:
        if "vae" not in options.phases:
            vae = _saved_vae(options.init_from, compute.device)
            print(f"[vae] not in --phases: taken unchanged from {options.init_from}", flush=True)
        elif (options.work_dir / "vae" / "config.json").exists():
            vae = _saved_vae(options.work_dir, compute.device)
            print("[vae] already trained; loaded from the work dir", flush=True)
        else:
            vae = train_vae(options, compute, crops, log)
            log.record["vae_heldout_psnr_after_phase"] = heldout_vae_psnr(vae, compute.device, options.eval_crops)
            print(f"[vae] held-out PSNR {log.record['vae_heldout_psnr_after_phase']:.2f} dB", flush=True)
            log.save()
        vae.requires_grad_(False)
        vae.eval()
        if "perceptual" not in options.phases:
            perceptual = _saved_perceptual(options.init_from)
            print(f"[perceptual] not in --phases: taken unchanged from {options.init_from}", flush=True)
        elif (options.work_dir / "perceptual" / "config.json").exists():
            perceptual = _saved_perceptual(options.work_dir)
            print("[perceptual] already trained; loaded from the work dir", flush=True)
        else:
            perceptual = train_perceptual(options, compute, crops, log, vae)
            log.save()
        if "unet" in options.phases:
            unet, text_encoder, tokenizer = train_unet(options, compute, crops, log, vae)
        else:
            unet, text_encoder, tokenizer = _unchanged_unet(options)
    except StopRequested:
        log.save()
        print("stopped after --stop-after-steps; re-run the same command to continue", flush=True)
        return log.record

    log.record["vae_heldout_psnr"] = heldout_vae_psnr(vae, compute.device, options.eval_crops)
    options.output.mkdir(parents=True, exist_ok=True)
    save_demo_pipeline(vae, text_encoder, tokenizer, unet, perceptual, options.output)
    size = weights_bytes(options.output)
    if size > options.max_mb * 1e6:
        raise SystemExit(f"the saved weights take {size / 1e6:.1f} MB, over --max-mb {options.max_mb}")
    log.account()
    log.record["total_minutes"] = round(log.record["wall_seconds"] / 60, 2)
    log.record["weights_bytes"] = size
    log.record["done"] = True
    sizes = {**counts, "bytes": size, "scaling_factor": float(vae.config.scaling_factor)}
    write_readme(options, log.record, sizes)
    log.write()
    print(
        f"done in {log.record['total_minutes']} min; VAE held-out PSNR {log.record['vae_heldout_psnr']:.2f} dB; "
        f"weights {size / 1e6:.1f} MB; model in {options.output}",
        flush=True,
    )
    return log.record


def _saved_vae(folder: Path, device: torch.device) -> Any:
    """The VAE saved in ``folder`` (the work dir, or the ``--init-from`` model), as saved (``scaling_factor`` too)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder / "vae").to(device)


def _saved_perceptual(folder: Path) -> Any:
    """The perceptual features saved in ``folder`` (the work dir, or the ``--init-from`` model)."""
    from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures

    return PerceptualFeatures.from_pretrained(folder / "perceptual").eval().requires_grad_(False)


def _unchanged_unet(options: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The ``--init-from`` model's UNet, text encoder and tokenizer, as saved."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = options.init_from
    print(f"[unet] not in --phases: the UNet, text encoder and tokenizer taken unchanged from {folder}", flush=True)
    return (
        UNet2DConditionModel.from_pretrained(folder / "unet"),
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        CLIPTokenizer.from_pretrained(folder / "tokenizer"),
    )
