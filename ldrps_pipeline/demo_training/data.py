"""The training data: augmented crops of the training photos, their captions, and banks of pre-encoded latents."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ldrps_pipeline.demo_training.atomic_files import save_torch
from ldrps_pipeline.demo_training.compute import Compute
from ldrps_pipeline.demo_training.training_photos import TrainingPhoto

__all__ = ["LatentBank", "LatentBanks", "PhotoCrops", "caption_token_ids"]


class PhotoCrops:
    """Random augmented square crops of the training photos, as tensors in [-1, 1].

    Each crop takes a photo uniformly, a square whose side is a fraction in [scale_min, 1] of the
    shorter side, resizes it (antialiased bilinear), flips it horizontally with probability 0.5 and
    jitters brightness, contrast and saturation by up to 10 %.
    """

    def __init__(self, photos: Sequence[TrainingPhoto], device: torch.device, scale_min: float = 0.5) -> None:
        self.captions = tuple(photo.caption for photo in photos)
        self.device = device
        self.scale_min = scale_min
        self.photos = [torch.from_numpy(photo.image).permute(2, 0, 1).contiguous().to(device) for photo in photos]

    def sample(self, batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (images of shape (batch, 3, size, size) in [-1, 1], photo indices of shape (batch,))."""
        u = torch.rand(batch, 7, generator=generator).tolist()
        indices = torch.randint(0, len(self.photos), (batch,), generator=generator)
        crops = []
        for i, photo_index in enumerate(indices.tolist()):
            photo = self.photos[photo_index]
            height, width = photo.shape[1:]
            short = min(height, width)
            side = max(8, round(short * (self.scale_min + (1.0 - self.scale_min) * u[i][0])))
            top = int(u[i][1] * (height - side + 1))
            left = int(u[i][2] * (width - side + 1))
            crop = photo[None, :, top : top + side, left : left + side]
            if side != size:
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if u[i][3] < 0.5:
                crop = crop.flip(-1)
            brightness, contrast, saturation = (0.9 + 0.2 * u[i][k] for k in (4, 5, 6))
            grey = crop.mean(dim=1, keepdim=True)
            crop = grey + saturation * (crop - grey)
            crop = crop.mean() + contrast * (crop - crop.mean())
            crops.append((crop * brightness).clamp(0.0, 1.0))
        return torch.cat(crops) * 2.0 - 1.0, indices


def caption_token_ids(tokenizer: Any, captions: Sequence[str], device: torch.device) -> torch.Tensor:
    """Token ids of the photos' captions, one row per caption, then a last row for the empty caption."""
    token_ids = tokenizer([*captions, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return token_ids.input_ids.to(device)


@dataclass(frozen=True)
class LatentBank:
    """Pre-encoded training crops of one size: the VAE posterior's mean and std per crop, and its photo index."""

    mean: torch.Tensor
    std: torch.Tensor
    index: torch.Tensor

    @classmethod
    @torch.no_grad()
    def encode(cls, vae: Any, crops: PhotoCrops, compute: Compute, count: int, size: int, seed: int) -> LatentBank:
        """Encode ``count`` random crops of ``size`` pixels, drawn with a generator seeded by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        means, stds, indices = [], [], []
        chunk = max(1, 4096 // size)
        done = 0
        while done < count:
            n = min(chunk, count - done)
            x, index = crops.sample(n, size, generator)
            with compute.autocast():
                posterior = vae.encode(x).latent_dist
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
            indices.append(index)
            done += n
        return cls(torch.cat(means), torch.cat(stds), torch.cat(indices))

    def sample(self, batch: int, scaling: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch`` crops and a latent of each from its posterior: (scaled latents, photo indices)."""
        pick = torch.randint(0, self.index.shape[0], (batch,), generator=generator)
        mean = self.mean[pick]
        noise = torch.randn(mean.shape, generator=generator)
        return (mean + self.std[pick] * noise) * scaling, self.index[pick]


class LatentBanks:
    """The latent bank of each crop size, encoded on first use and kept in ``<work-dir>/latent_bank_<size>.pt``.

    The bank at ``options.crop_size`` holds ``options.latent_bank`` crops; a bank at a larger size holds as
    many as half the same number of pixels needs (at least 64).
    """

    def __init__(self, vae: Any, crops: PhotoCrops, compute: Compute, options: argparse.Namespace) -> None:
        self.vae, self.crops, self.compute = vae, crops, compute
        self.work_dir: Path = options.work_dir
        self.crop_size: int = options.crop_size
        self.bank_size: int = options.latent_bank
        self.seed: int = options.seed
        self._banks: dict[int, LatentBank] = {}

    def __getitem__(self, size: int) -> LatentBank:
        if size not in self._banks:
            path = self.work_dir / f"latent_bank_{size}.pt"
            if path.exists():
                self._banks[size] = LatentBank(**torch.load(path, weights_only=True))
            else:
                self._banks[size] = self._encode(size, path)
        return self._banks[size]

    def _encode(self, size: int, path: Path) -> LatentBank:
        if size == self.crop_size:
            count = self.bank_size
        else:
            count = max(64, round(self.bank_size * (self.crop_size / size) ** 2 / 2))
        begin = time.monotonic()
        bank = LatentBank.encode(self.vae, self.crops, self.compute, count, size, self.seed + 100 + size)
        save_torch({"mean": bank.mean, "std": bank.std, "index": bank.index}, path)
        print(f"[unet] encoded {count} crops of {size}px in {time.monotonic() - begin:.0f} s", flush=True)
        return bank
