"""The presets of ``ldrps-train-demo`` and the options that define the models."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["ARCHITECTURE_KEYS", "PRESETS", "architecture"]

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "vae_minutes": 20.0,
        "perceptual_minutes": 3.0,
        "unet_minutes": 36.0,
        "vae_channels": (32, 64, 64),
        "vae_layers": 2,
        "vae_norm_groups": 8,
        "vae_latent_channels": 8,
        "perceptual_channels": (32, 64),
        "unet_channels": (64, 128, 128),
        "unet_layers": 1,
        "unet_norm_groups": 16,
        "unet_heads": 4,
        "text_hidden": 64,
        "text_layers": 2,
        "text_heads": 2,
        "crop_size": 64,
        "hires_size": 128,
        "hires_fraction": 0.2,
        "vae_batch": 16,
        "unet_batch": 32,
        "vae_lr": 5e-4,
        "unet_lr": 4e-4,
        "latent_bank": 16384,
        "training_photos": "packaged+debian",
    },
    "gpu": {
        "vae_minutes": 3.0,
        "perceptual_minutes": 0.5,
        "unet_minutes": 4.5,
        "vae_channels": (32, 64, 64),
        "vae_layers": 2,
        "vae_norm_groups": 8,
        "vae_latent_channels": 8,
        "perceptual_channels": (32, 64),
        "unet_channels": (64, 128, 128),
        "unet_layers": 1,
        "unet_norm_groups": 16,
        "unet_heads": 4,
        "text_hidden": 64,
        "text_layers": 2,
        "text_heads": 2,
        "crop_size": 128,
        "hires_size": 256,
        "hires_fraction": 0.15,
        "vae_batch": 32,
        "unet_batch": 128,
        "vae_lr": 5e-4,
        "unet_lr": 4e-4,
        "latent_bank": 65536,
        "training_photos": "packaged+debian",
    },
}
"""Default sizes and budgets per preset; every entry can be overridden by its command-line option.

Both presets build the same networks (the ``ARCHITECTURE_KEYS``): they differ in crops, batches and budgets
only, so a run of either can continue from a model of the other with ``--init-from``. The ``gpu`` preset's
budgets (8 minutes in all) leave room, in one 10-minute command on a lent GPU, for loading and saving."""

ARCHITECTURE_KEYS = (
    "vae_channels",
    "vae_layers",
    "vae_norm_groups",
    "vae_latent_channels",
    "perceptual_channels",
    "unet_channels",
    "unet_layers",
    "unet_norm_groups",
    "unet_heads",
    "text_hidden",
    "text_layers",
    "text_heads",
    "training_photos",
    "seed",
)
"""Options that a resumed run must not change (they define the models and their data)."""


def architecture(options: argparse.Namespace) -> dict[str, Any]:
    """The options of ``ARCHITECTURE_KEYS`` as JSON values (tuples as lists), in the parser's order."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in vars(options).items()
        if key in ARCHITECTURE_KEYS
    }
