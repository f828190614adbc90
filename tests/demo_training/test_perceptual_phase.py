"""The perceptual phase (``demo_training.phases.PerceptualTrainer``): VGG-shaped features distilled from the VAE."""

import argparse

import torch

from ldrps_pipeline.demo_training.compute import Compute
from ldrps_pipeline.demo_training.data import PhotoCrops
from ldrps_pipeline.demo_training.models import make_vae
from ldrps_pipeline.demo_training.phases import PerceptualTrainer, vae_early_features
from ldrps_pipeline.demo_training.training_photos import TrainingPhoto
from ldrps_pipeline.evaluation.photos import CAPTIONS, load_photo
from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures

OPTIONS = argparse.Namespace(
    vae_channels=(8, 16, 16),
    vae_layers=1,
    vae_norm_groups=4,
    vae_latent_channels=4,
    hires_size=32,
    perceptual_channels=(8, 16),
    vae_lr=3e-3,
    seed=0,
    init_from=None,
)


def test_the_features_learn_to_explain_the_vae_encoders_first_block() -> None:
    torch.manual_seed(0)
    vae = make_vae(OPTIONS).eval().requires_grad_(False)
    crops = PhotoCrops(
        [TrainingPhoto("astronaut", CAPTIONS["astronaut"], load_photo("astronaut"))], torch.device("cpu")
    )
    trainer = PerceptualTrainer(OPTIONS, Compute(torch.device("cpu"), bf16=False), crops, vae)
    assert isinstance(trainer.features, PerceptualFeatures) and trainer.features.config.channels == (8, 16)
    images, _ = crops.sample(2, 16, torch.Generator().manual_seed(0))
    # Both sides are at half resolution: VGG's second block and the VAE's first block.
    assert trainer.features((images + 1) / 2).shape == (2, 16, 8, 8)
    assert vae_early_features(vae, images).shape == (2, 8, 8, 8)

    generator = torch.Generator().manual_seed(1)
    losses = [trainer.step(8, 16, generator)["loss"].item() for _ in range(60)]
    # The loss is the fraction of the target's variance left unexplained: near 1 or above at the start.
    assert losses[0] > 0.5
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]
    assert all(p.grad is None or not p.requires_grad for p in vae.parameters())


def test_the_bundled_demo_model_carries_features_distilled_from_its_own_vae() -> None:
    """The demo model's ``perceptual`` component, on held-out crops it never saw: a least-squares 1x1 read-out of its
    features leaves 3.4 % of the variance of the VAE encoder's first-block features unexplained (measured on
    2026-12-03; the training read-out 7.1 %, randomly initialised features of the same shape 10-14 %), so the
    perceptual terms compare what that encoder sees."""
    import numpy as np

    from ldrps_pipeline.evaluation.photos import heldout_crops
    from ldrps_pipeline.hub.loading import load_pipeline

    pipe = load_pipeline("demo")
    assert isinstance(pipe.perceptual, PerceptualFeatures) and list(pipe.perceptual.config.channels) == [32, 64]
    images = torch.from_numpy(np.stack(heldout_crops(64, 2, seed=0))).permute(0, 3, 1, 2)
    with torch.no_grad():
        features = pipe.perceptual(images).double()
        target = vae_early_features(pipe.vae, images * 2 - 1).double()
    rows = torch.cat([features.permute(0, 2, 3, 1).flatten(0, 2), torch.ones(features[:, 0].numel(), 1)], dim=1)
    target = target.permute(0, 2, 3, 1).flatten(0, 2)
    fitted = rows @ (torch.linalg.pinv(rows) @ target)
    assert float((fitted - target).pow(2).mean() / target.var()) < 0.05
