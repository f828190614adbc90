"""The training data (``demo_training.data``): photo crops, the caption table and the latent banks."""

import argparse
from pathlib import Path

import pytest
import torch

from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
from ldrps_pipeline.demo_training.compute import Compute
from ldrps_pipeline.demo_training.data import LatentBank, LatentBanks, PhotoCrops, caption_token_ids
from ldrps_pipeline.demo_training.models import make_vae
from ldrps_pipeline.demo_training.training_photos import TrainingPhoto
from ldrps_pipeline.evaluation.photos import CAPTIONS, load_photo

NAMES = ("astronaut", "china")
PHOTOS = [TrainingPhoto(name, CAPTIONS[name], load_photo(name)) for name in NAMES]
CPU_FP32 = Compute(torch.device("cpu"), bf16=False)


@pytest.fixture(scope="module")
def crops() -> PhotoCrops:
    return PhotoCrops(PHOTOS, torch.device("cpu"))


def test_crops_are_seeded_augmented_squares_in_range(crops: PhotoCrops) -> None:
    images, indices = crops.sample(6, 24, torch.Generator().manual_seed(1))
    again, same_indices = crops.sample(6, 24, torch.Generator().manual_seed(1))
    other, _ = crops.sample(6, 24, torch.Generator().manual_seed(2))
    assert images.shape == (6, 3, 24, 24) and indices.shape == (6,)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert set(indices.tolist()) <= {0, 1}
    assert torch.equal(images, again) and torch.equal(indices, same_indices)
    assert not torch.equal(images, other)
    assert len({tuple(image.flatten()[:8].tolist()) for image in images}) == 6  # six different crops


def test_caption_table_ends_with_the_empty_caption() -> None:
    tokenizer = byte_level_clip_tokenizer()
    ids = caption_token_ids(tokenizer, [photo.caption for photo in PHOTOS], torch.device("cpu"))
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    assert ids.shape == (3, 77)
    assert torch.equal(ids[2], empty) and not torch.equal(ids[0], ids[1])


def test_latent_banks_are_encoded_once_and_reloaded(crops: PhotoCrops, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    vae = make_vae(
        argparse.Namespace(
            vae_channels=(8, 8, 8), vae_layers=1, vae_norm_groups=4, vae_latent_channels=4, hires_size=32
        )
    )
    options = argparse.Namespace(work_dir=tmp_path, crop_size=16, latent_bank=10, seed=0)
    banks = LatentBanks(vae, crops, CPU_FP32, options)
    small, large = banks[16], banks[32]
    assert small.mean.shape == (10, 4, 4, 4) and small.std.shape == small.mean.shape
    assert large.mean.shape == (64, 4, 8, 8)  # a hires bank holds at least 64 crops
    assert (small.std > 0).all() and set(small.index.tolist()) <= {0, 1}
    assert banks[16] is small
    assert capsys.readouterr().out.count("[unet] encoded") == 2
    reloaded = LatentBanks(vae, crops, CPU_FP32, options)[32]
    assert capsys.readouterr().out == ""
    assert torch.equal(reloaded.mean, large.mean) and torch.equal(reloaded.index, large.index)


def test_latent_bank_samples_scaled_posterior_draws() -> None:
    mean = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 4, 2, 2)
    bank = LatentBank(mean=mean, std=torch.zeros_like(mean), index=torch.tensor([0, 1, 2, 3, 4]))
    latents, index = bank.sample(3, 0.5, torch.Generator().manual_seed(0))
    assert latents.shape == (3, 4, 2, 2)
    assert torch.equal(latents, 0.5 * index.float().view(3, 1, 1, 1).expand(3, 4, 2, 2))
    noisy = LatentBank(mean=mean, std=torch.ones_like(mean), index=bank.index)
    latents, index = noisy.sample(3, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(latents, index.float().view(3, 1, 1, 1).expand(3, 4, 2, 2))
