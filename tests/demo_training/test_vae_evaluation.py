"""The VAE's held-out reconstruction PSNR (``demo_training.vae_evaluation``)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldrps_pipeline.demo_training.vae_evaluation import heldout_vae_psnr
from ldrps_pipeline.evaluation.photos import heldout_crops


class GreyVae(torch.nn.Module):
    """Encodes anything and decodes every latent to mid-grey (0 in [-1, 1] units)."""

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x[:, :1, ::4, ::4]))

    def decode(self, latent: torch.Tensor) -> SimpleNamespace:
        height, width = latent.shape[-2] * 4, latent.shape[-1] * 4
        return SimpleNamespace(sample=torch.zeros(latent.shape[0], 3, height, width))


def test_heldout_psnr_is_the_mean_over_heldout_crops() -> None:
    expected = [-10 * np.log10(np.mean((crop.astype(np.float64) - 0.5) ** 2)) for crop in heldout_crops(32, 2, seed=0)]
    assert heldout_vae_psnr(GreyVae(), torch.device("cpu"), count_per_photo=2, size=32) == pytest.approx(
        np.mean(expected), rel=1e-12
    )
