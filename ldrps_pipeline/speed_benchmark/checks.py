"""The speed benchmark's checks that its configurations restore alike: image differences, and the decoder
gradient of a compiled pipeline against eager's."""

import torch

from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline


def difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max and mean absolute difference of two images."""
    diff = (a - b).abs()
    return {"max_abs": diff.max().item(), "mean_abs": diff.mean().item()}


def decoder_gradient(pipe: LDRPSPipeline, latents: torch.Tensor) -> torch.Tensor:
    """The gradient of ``mean(x0(z)^2)`` with respect to the latents ``z`` (1, C, h, w) through ``pipe``'s VAE
    decoder, in float32 on the CPU: the path by which every guidance gradient reaches the latents."""
    latents = latents.to(pipe.device).requires_grad_(True)
    height, width = (pipe.vae_scale_factor * side for side in latents.shape[-2:])
    with torch.enable_grad():
        image = pipe.decode(latents, height, width)
        return torch.autograd.grad((image**2).mean(), latents)[0].float().cpu()


def gradient_agreement(gradient: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """The cosine similarity of two gradients and the ratio of their norms (both 1 when they agree)."""
    cosine = torch.nn.functional.cosine_similarity(gradient.flatten(), expected.flatten(), dim=0)
    return {"cosine": cosine.item(), "norm_ratio": (gradient.norm() / expected.norm()).item()}
