"""The demo model's four trained networks, built from the command's options, and their size limit."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer

__all__ = [
    "check_weight_budget",
    "count_parameters",
    "load_initial_weights",
    "make_perceptual_features",
    "make_text_encoder",
    "make_unet",
    "make_vae",
]


def make_vae(options: argparse.Namespace) -> Any:
    """The VAE: 3 blocks (downsampling factor 4), ``--vae-latent-channels`` latent channels, no attention."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=options.vae_channels,
        layers_per_block=options.vae_layers,
        latent_channels=options.vae_latent_channels,
        norm_num_groups=options.vae_norm_groups,
        sample_size=options.hires_size,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )


def make_unet(options: argparse.Namespace) -> Any:
    """The UNet: 3 levels, cross-attention on the two lower levels and the middle, epsilon prediction."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=options.hires_size // 4,
        in_channels=options.vae_latent_channels,
        out_channels=options.vae_latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=options.unet_channels,
        layers_per_block=options.unet_layers,
        norm_num_groups=options.unet_norm_groups,
        cross_attention_dim=options.text_hidden,
        attention_head_dim=options.unet_heads,  # diffusers' legacy name: the number of heads
    )


def make_text_encoder(options: argparse.Namespace, tokenizer: Any) -> Any:
    """A small CLIP text encoder matching the byte-level tokenizer (vocabulary 514, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=options.text_hidden,
        intermediate_size=4 * options.text_hidden,
        num_hidden_layers=options.text_layers,
        num_attention_heads=options.text_heads,
        max_position_embeddings=77,
        projection_dim=options.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_perceptual_features(options: argparse.Namespace) -> Any:
    """The perceptual features: VGG16's first two blocks at ``--perceptual-channels`` widths (a stand-in for VGG16)."""
    from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures

    return PerceptualFeatures(channels=tuple(options.perceptual_channels))


def load_initial_weights(module: torch.nn.Module, options: argparse.Namespace, part: str) -> None:
    """With ``--init-from FOLDER``, load ``part``'s weights from that saved demo model (a warm start).

    This is how training accumulates across machines whose work dirs do not survive: a run starts from the
    committed demo model (``ldrps_pipeline/demo_model``) with fresh optimisers and schedules. Without
    ``--init-from`` nothing happens; a part the folder does not have (a model saved before its perceptual phase
    existed) starts from random weights, as said on the console.

    Raises:
        SystemExit: when the part's folder holds other than one weights file, or its weights do not fit the networks
            the options build.
    """
    if options.init_from is None:
        return
    from safetensors.torch import load_file

    if not (options.init_from / part).is_dir():
        print(f"[{part}] not in {options.init_from}: starts from random weights", flush=True)
        return
    files = sorted((options.init_from / part).glob("*.safetensors"))
    if len(files) != 1:
        raise SystemExit(
            f"--init-from {options.init_from}: expected one .safetensors file in {part}/, found {len(files)}"
        )
    state = load_file(files[0])
    own = module.state_dict()
    mismatched = sorted(
        set(own) ^ set(state) | {key for key in set(own) & set(state) if own[key].shape != state[key].shape}
    )
    # Non-persistent buffers (CLIP's position ids) are rebuilt by the module and may be absent from the file.
    mismatched = [key for key in mismatched if key in state or key in dict(module.named_parameters())]
    if mismatched:
        raise SystemExit(
            f"--init-from {options.init_from}: its {part} does not fit the networks of these options "
            f"({len(mismatched)} tensors differ, e.g. {mismatched[0]}); give the options it was trained with"
        )
    module.load_state_dict(state, strict=False)
    print(f"[{part}] initialised from {files[0]}", flush=True)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def check_weight_budget(options: argparse.Namespace) -> dict[str, int]:
    """Count the parameters of the four networks (built on the meta device, so nothing is allocated).

    Returns:
        ``{"vae": ..., "unet": ..., "text_encoder": ..., "perceptual": ...}``.

    Raises:
        SystemExit: if their fp32 weights would exceed ``--max-mb``.
    """
    with torch.device("meta"):
        counts = {
            "vae": count_parameters(make_vae(options)),
            "unet": count_parameters(make_unet(options)),
            "text_encoder": count_parameters(make_text_encoder(options, byte_level_clip_tokenizer())),
            "perceptual": count_parameters(make_perceptual_features(options)),
        }
    total = 4 * sum(counts.values())
    if total > options.max_mb * 1e6:
        raise SystemExit(f"the models would need {total / 1e6:.1f} MB of fp32 weights, over --max-mb {options.max_mb}")
    return counts
