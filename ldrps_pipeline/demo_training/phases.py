"""The three training phases: the VAE; the perceptual features, distilled from the VAE's encoder; then the
UNet with the text encoder on the VAE's latents.

Each phase is a :class:`~ldrps_pipeline.demo_training.resumable_loop.PhaseTrainer` (its models, optimiser
and step) that :func:`~ldrps_pipeline.demo_training.resumable_loop.run_phase` drives, and a function that
builds it, runs it and finishes the phase.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
from ldrps_pipeline.demo_training.compute import Compute
from ldrps_pipeline.demo_training.data import LatentBanks, PhotoCrops, caption_token_ids
from ldrps_pipeline.demo_training.models import (
    load_initial_weights,
    make_perceptual_features,
    make_text_encoder,
    make_unet,
    make_vae,
)
from ldrps_pipeline.demo_training.resumable_loop import PhasePlan, run_phase
from ldrps_pipeline.demo_training.training_log import TrainingLog
from ldrps_pipeline.evaluation.metrics import psnr
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG

__all__ = [
    "Ema",
    "PerceptualTrainer",
    "UnetTrainer",
    "VaeTrainer",
    "train_perceptual",
    "train_unet",
    "train_vae",
    "vae_early_features",
]


class Ema:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in parameters]
        self.updates = 0

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter]) -> None:
        """Move the average towards the current parameters."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: list[torch.nn.Parameter]) -> None:
        """Write the averaged values into the parameters."""
        for target, value in zip(parameters, self.shadow, strict=True):
            target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state."""
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from ``state_dict``."""
        for target, value in zip(self.shadow, state["shadow"], strict=True):
            target.copy_(value)
        self.updates = int(state["updates"])


class VaeTrainer:
    """Phase 1: the VAE on random crops, with an L1 + MSE + ``--kl-weight`` KL loss.

    Besides the loss it logs ``train_psnr``: the PSNR of the training batch's reconstruction, in [0, 1] units.
    """

    log_decimals = {"loss": 6, "train_psnr": 3}

    def __init__(self, options: argparse.Namespace, compute: Compute, crops: PhotoCrops) -> None:
        self.compute, self.crops, self.kl_weight = compute, crops, options.kl_weight
        torch.manual_seed(options.seed)
        self.vae = make_vae(options).to(compute.device)
        load_initial_weights(self.vae, options, "vae")
        self.optimizer = torch.optim.AdamW(
            self.vae.parameters(), lr=options.vae_lr, weight_decay=0.0, betas=(0.9, 0.99)
        )
        self.vae.train()

    def step(self, batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step on ``batch`` crops of ``size`` pixels."""
        x, _ = self.crops.sample(batch, size, generator)
        with self.compute.autocast():
            posterior = self.vae.encode(x).latent_dist
            reconstruction = self.vae.decode(posterior.sample()).sample
        reconstruction = reconstruction.float()
        loss = (
            F.l1_loss(reconstruction, x)
            + F.mse_loss(reconstruction, x)
            + self.kl_weight * posterior.kl().float().mean()
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.optimizer.step()
        # the whole batch as one image (its MSE over every pixel); images in [-1, 1] have a data range of 2
        batch_psnr = psnr(reconstruction.detach().flatten(0, 1)[None], x.flatten(0, 1)[None], data_range=2.0)
        return {"loss": loss.detach(), "train_psnr": batch_psnr[0]}

    def state_dict(self) -> dict[str, Any]:
        """The VAE's and the optimiser's state."""
        return {"model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``."""
        self.vae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def train_vae(options: argparse.Namespace, compute: Compute, crops: PhotoCrops, log: TrainingLog) -> Any:
    """Train (or continue) the VAE; returns it with ``scaling_factor`` = 1 / latent std, saved to ``<work-dir>/vae``."""
    trainer = VaeTrainer(options, compute, crops)
    plan = PhasePlan("vae", options.vae_minutes, options.vae_steps, options.vae_lr, options.vae_batch, options.seed + 1)
    progress = run_phase(trainer, plan, options, log, compute.device)
    vae = trainer.vae
    vae.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(options.seed + 2)
        latents = []
        for _ in range(8):
            x, _ = crops.sample(32, options.crop_size, generator)
            latents.append(vae.encode(x).latent_dist.sample())
        std = float(torch.cat(latents).float().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    log.record["vae_latent_std"] = std
    log.record["vae_steps"] = progress.step
    log.record["vae_minutes"] = round(progress.elapsed / 60, 3)
    vae.save_pretrained(options.work_dir / "vae")
    print(f"[vae] done: {progress.step} steps, latent std {std:.4f}, scaling_factor {1 / std:.5f}", flush=True)
    return vae


def vae_early_features(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's features after its first block (half resolution) of images in [-1, 1]."""
    return vae.encoder.down_blocks[0](vae.encoder.conv_in(images))


class PerceptualTrainer:
    """Phase 2: the demo model's stand-in for VGG16's perceptual features, distilled from the VAE's encoder.

    A :class:`~ldrps_pipeline.perceptual_ldrps.PerceptualFeatures` network (VGG16's first two blocks at
    ``--perceptual-channels`` widths) and a 1x1 convolution that reads its half-resolution output are trained so
    that the read-out matches the frozen VAE encoder's features after its first block: the features then hold
    what the encoder sees of an image's local structure and colour, which is what the perceptual terms compare.
    The loss is the read-out's squared error over the target's variance (the fraction of it left unexplained).
    Only the feature network is kept; the read-out is discarded.
    """

    log_decimals = {"loss": 5}

    def __init__(self, options: argparse.Namespace, compute: Compute, crops: PhotoCrops, vae: Any) -> None:
        self.compute, self.crops, self.vae = compute, crops, vae
        torch.manual_seed(options.seed + 20)
        self.features = make_perceptual_features(options).to(compute.device)
        load_initial_weights(self.features, options, "perceptual")
        first_block_width = vae.config.block_out_channels[0]
        self.readout = torch.nn.Conv2d(options.perceptual_channels[1], first_block_width, 1).to(compute.device)
        self.parameters = list(self.features.parameters()) + list(self.readout.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=options.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.features.train()

    def step(self, batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step on ``batch`` crops of ``size`` pixels."""
        x, _ = self.crops.sample(batch, size, generator)
        with torch.no_grad(), self.compute.autocast():
            target = vae_early_features(self.vae, x).float()
        with self.compute.autocast():
            prediction = self.readout(self.features((x + 1.0) / 2.0)).float()
        loss = F.mse_loss(prediction, target) / target.var()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        """The feature network's, the read-out's and the optimiser's state."""
        return {
            "features": self.features.state_dict(),
            "readout": self.readout.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``."""
        self.features.load_state_dict(state["features"])
        self.readout.load_state_dict(state["readout"])
        self.optimizer.load_state_dict(state["optimizer"])


def train_perceptual(
    options: argparse.Namespace, compute: Compute, crops: PhotoCrops, log: TrainingLog, vae: Any
) -> Any:
    """Train (or continue) the perceptual features on the frozen ``vae``; returns them, saved to ``<work-dir>``."""
    trainer = PerceptualTrainer(options, compute, crops, vae)
    plan = PhasePlan(
        "perceptual",
        options.perceptual_minutes,
        options.perceptual_steps,
        options.vae_lr,
        options.vae_batch,
        options.seed + 21,
    )
    progress = run_phase(trainer, plan, options, log, compute.device)
    features = trainer.features.eval().requires_grad_(False)
    log.record["perceptual_steps"] = progress.step
    log.record["perceptual_minutes"] = round(progress.elapsed / 60, 3)
    features.save_pretrained(options.work_dir / "perceptual")
    print(f"[perceptual] done: {progress.step} steps", flush=True)
    return features


class UnetTrainer:
    """Phase 3: the UNet and the text encoder jointly, on latents of the frozen VAE.

    Epsilon prediction with Stable Diffusion's noise schedule and min-SNR weighting (``--snr-gamma``); the
    caption is replaced by the empty one with probability ``--text-dropout``; both models keep an EMA.
    """

    log_decimals = {"loss": 6}

    def __init__(self, options: argparse.Namespace, compute: Compute, crops: PhotoCrops, vae: Any) -> None:
        from diffusers import DDIMScheduler

        self.options, self.compute = options, compute
        device = compute.device
        self.tokenizer = byte_level_clip_tokenizer()
        torch.manual_seed(options.seed + 10)
        self.unet = make_unet(options).to(device)
        self.text_encoder = make_text_encoder(options, self.tokenizer).to(device)
        load_initial_weights(self.unet, options, "unet")
        load_initial_weights(self.text_encoder, options, "text_encoder")
        self.parameters = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=options.unet_lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.ema = Ema(self.parameters, options.ema_decay)
        self.scheduler = DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG)
        self.alphas = self.scheduler.alphas_cumprod.to(device)
        self.token_ids = caption_token_ids(self.tokenizer, crops.captions, device)
        self.empty_caption_row = self.token_ids.shape[0] - 1
        self.scaling = float(vae.config.scaling_factor)
        self.banks = LatentBanks(vae, crops, compute, options)
        self.unet.train()
        self.text_encoder.train()

    def step(self, batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step on ``batch`` latents of ``size``-pixel crops."""
        device, options = self.compute.device, self.options
        latents, rows = self.banks[size].sample(batch, self.scaling, generator)
        latents = latents.to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator)
        timesteps = timesteps.to(device)
        rows[torch.rand(batch, generator=generator) < options.text_dropout] = self.empty_caption_row
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with self.compute.autocast():
            states = self.text_encoder(self.token_ids[unique_rows.to(device)])[0]
            prediction = self.unet(noisy, timesteps, states[inverse.to(device)]).sample
        error = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
        if options.snr_gamma > 0:
            snr = self.alphas[timesteps] / (1.0 - self.alphas[timesteps])
            error = error * torch.clamp(snr, max=options.snr_gamma) / snr
        loss = error.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.ema.update(self.parameters)
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        """The two models', the optimiser's and the EMA's state."""
        return {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``."""
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])


def train_unet(
    options: argparse.Namespace, compute: Compute, crops: PhotoCrops, log: TrainingLog, vae: Any
) -> tuple[Any, Any, Any]:
    """Train (or continue) the UNet and the text encoder on the frozen ``vae``.

    Returns:
        (unet, text_encoder, tokenizer), the two models holding their EMA weights.
    """
    trainer = UnetTrainer(options, compute, crops, vae)
    plan = PhasePlan(
        "unet", options.unet_minutes, options.unet_steps, options.unet_lr, options.unet_batch, options.seed + 11
    )
    progress = run_phase(trainer, plan, options, log, compute.device)
    trainer.ema.copy_to(trainer.parameters)
    log.record["unet_steps"] = progress.step
    log.record["unet_minutes"] = round(progress.elapsed / 60, 3)
    print(f"[unet] done: {progress.step} steps", flush=True)
    return trainer.unet, trainer.text_encoder, trainer.tokenizer
