"""The posterior (guidance) loss terms of LD-RPS.

Each term is a small function; the weights and the timestep gates that switch them on come
from :class:`RecurrentPosteriorScheduler`. Everything here runs in float32: the pipeline casts
decoded images to float32 before calling these functions.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

PerceptualDistanceToInput = Callable[[torch.Tensor], torch.Tensor]


def exposure_loss(image: torch.Tensor, patch_size: int = 32, level: float = 0.5) -> torch.Tensor:
    """Exposure control loss: mean over average-pooled patches of the channel-mean image of ``(patch - level)^2``.

    Images smaller than ``patch_size`` use one patch per side as large as the image allows. When a side
    is not a multiple of ``patch_size``, its last, narrower patches are kept (each the mean of its own
    pixels), so that every pixel takes part: inputs are restored at their own size, not only at 512.
    """
    gray = image.mean(dim=1, keepdim=True)
    kernel = (min(patch_size, gray.shape[-2]), min(patch_size, gray.shape[-1]))
    patches = F.avg_pool2d(gray, kernel, ceil_mode=True)
    return ((patches - level) ** 2).mean()


def color_loss(image: torch.Tensor) -> torch.Tensor:
    """Colour constancy loss ``sqrt((mr-mg)^4 + (mr-mb)^4 + (mg-mb)^4)`` on per-channel spatial means (mean over the batch)."""
    mean_r, mean_g, mean_b = image.mean(dim=(-2, -1)).unbind(dim=1)
    value = (mean_r - mean_g) ** 4 + (mean_r - mean_b) ** 4 + (mean_g - mean_b) ** 4
    # The tiny epsilon keeps the gradient of sqrt finite when the three means are equal.
    return torch.sqrt(value + 1e-12).mean()


def posterior_loss(
    aligned: torch.Tensor,
    degraded: torch.Tensor,
    estimate: torch.Tensor,
    *,
    mse_weight: float,
    perceptual_weight: float,
    adversarial_term: torch.Tensor | None,
    adversarial_weight: float,
    exposure_weight: float,
    color_weight: float,
    exposure_patch_size: int,
    perceptual_to_input: PerceptualDistanceToInput | None,
) -> torch.Tensor:
    """The guidance loss ``L`` of one image at one step (only called when ``t`` is below the guidance gate).

    ``L = w_mse MSE(f(x), y) + c_pse P(f(x), y) + c_adv G + w_exp L_exp(x) + w_col L_col(x)``; a term
    whose weight is zero is not computed.

    Args:
        aligned: ``f(x)``, the clean estimate mapped into the degraded domain, (1, 3, H, W), with grad.
        degraded: ``y``, the input, (1, 3, H, W).
        estimate: ``x``, the decoded clean estimate, (1, 3, H, W), with grad.
        adversarial_term: ``G = BCE(D_g(x - y), real)`` when ``adversarial_weight > 0``, else ``None``.
        perceptual_to_input: ``a -> P(a, y)``, the perceptual distance to the input; required when
            ``perceptual_weight > 0``.
    """
    loss = mse_weight * F.mse_loss(aligned, degraded)
    if perceptual_weight > 0:
        loss = loss + perceptual_weight * perceptual_to_input(aligned)
    if adversarial_weight > 0:
        loss = loss + adversarial_weight * adversarial_term
    if exposure_weight > 0:
        loss = loss + exposure_weight * exposure_loss(estimate, exposure_patch_size)
    if color_weight > 0:
        loss = loss + color_weight * color_loss(estimate)
    return loss
