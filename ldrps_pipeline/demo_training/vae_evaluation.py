"""The trained VAE's reconstruction quality on held-out photos."""

from __future__ import annotations

from typing import Any

import torch

from ldrps_pipeline.evaluation.metrics import psnr
from ldrps_pipeline.evaluation.photos import heldout_crops

__all__ = ["heldout_vae_psnr"]


@torch.no_grad()
def heldout_vae_psnr(vae: Any, device: torch.device, count_per_photo: int = 4, size: int = 128) -> float:
    """Mean reconstruction PSNR (dB) of the VAE (fp32, posterior mode) on ``heldout_crops(size, count_per_photo)``.

    The PSNR of each crop is computed in float64, one crop at a time.
    """
    vae.eval()
    values = []
    for crop in heldout_crops(size=size, count_per_photo=count_per_photo, seed=0):
        reference = torch.from_numpy(crop).permute(2, 0, 1)[None].to(device)
        latent = vae.encode(reference * 2.0 - 1.0).latent_dist.mode()
        reconstruction = (vae.decode(latent).sample.clamp(-1.0, 1.0) + 1.0) / 2.0
        values.append(psnr(reconstruction.double(), reference.double()))
    return float(torch.cat(values).mean())
