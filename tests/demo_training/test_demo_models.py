"""The demo model's networks (``demo_training.models``): built from the options, within the size limit."""

import argparse

import pytest

from ldrps_pipeline.demo_training.command import parse_args
from ldrps_pipeline.demo_training.models import check_weight_budget, count_parameters, make_vae
from ldrps_pipeline.demo_training.presets import ARCHITECTURE_KEYS, PRESETS, architecture


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_fit_the_size_limit(preset: str) -> None:
    args = parse_args(["--output", "o", "--work-dir", "w", "--preset", preset])
    counts = check_weight_budget(args)
    assert set(counts) == {"vae", "unet", "text_encoder", "perceptual"}
    assert 4 * sum(counts.values()) <= 40e6


def test_the_presets_build_the_same_networks_so_either_continues_the_other() -> None:
    cpu, gpu = (parse_args(["--output", "o", "--work-dir", "w", "--preset", name]) for name in ("cpu", "gpu"))
    assert architecture(cpu) == architecture(gpu)
    assert set(architecture(cpu)) == set(ARCHITECTURE_KEYS)
    assert (gpu.crop_size, gpu.vae_batch) != (cpu.crop_size, cpu.vae_batch)
    assert gpu.vae_minutes + gpu.perceptual_minutes + gpu.unet_minutes <= 8.0


def test_weight_budget_counts_what_the_networks_hold() -> None:
    args = argparse.Namespace(
        vae_channels=(8, 16, 16), vae_layers=1, vae_norm_groups=4, vae_latent_channels=8, hires_size=32
    )
    vae = make_vae(args)
    args = parse_args(["--output", "o", "--work-dir", "w", "--vae-channels", "8,16,16", "--vae-layers", "1"])
    args.vae_norm_groups = 4
    assert check_weight_budget(args)["vae"] == count_parameters(vae)
    assert vae.config.latent_channels == 8 and len(vae.config.block_out_channels) == 3


def test_weight_budget_refuses_models_over_the_limit() -> None:
    args = parse_args(["--output", "o", "--work-dir", "w", "--max-mb", "1"])
    with pytest.raises(SystemExit, match="over --max-mb 1"):
        check_weight_budget(args)
