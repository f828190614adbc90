"""The posterior (guidance) loss of LD-RPS: its terms and their sum (ALGORITHM.md, "Guidance (posterior) term").

Each term is a small function, and :func:`posterior_loss` adds them up for every image in the order of
ALGORITHM.md; the weights and the timestep gates that switch them on come from
:class:`RecurrentPosteriorScheduler`, the alignment module ``f`` and the residual discriminator ``D_g``
from each image's :class:`AlignmentTrainer`. Everything here runs in float32: the pipeline casts
decoded images to float32 before calling these functions.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file: the
scheduler's weights and the trainers come in as the protocols below.
"""

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F


class LossWeights(Protocol):
    """The weights of the posterior loss terms at one step (``GuidanceWeights``); a zero weight skips its term."""

    mse: float
    perceptual: float
    adversarial: float
    exposure: float
    color: float


class ImageAlignment(Protocol):
    """What the posterior loss uses of one image's alignment state (``AlignmentTrainer``)."""

    def align(self, estimate: torch.Tensor) -> torch.Tensor: ...

    def train_residual_discriminator(
        self, estimate: torch.Tensor, aligned: torch.Tensor, degraded: torch.Tensor
    ) -> None: ...

    def residual_adversarial_term(self, estimate: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor: ...


PerceptualDistanceToFeatures = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(a, features of b) -> P(a, b)`` (``PerceptualFeatures.distance_to_features``)."""


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
    estimates: torch.Tensor,
    degraded: torch.Tensor,
    alignments: Sequence[ImageAlignment],
    weights: LossWeights,
    *,
    exposure_patch_size: int,
    perceptual_distance: PerceptualDistanceToFeatures | None = None,
    degraded_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guidance loss ``L`` at one step below the guidance gate, summed over the images (ALGORITHM.md,
    "Guidance", steps 1, 3 and 4):

    ``L = w_mse MSE(f(x), y) + c_pse P(f(x), y) + c_adv G + w_exp L_exp(x) + w_col L_col(x)``, with ``D_g``
    taking its Adam step before ``G``; a term whose weight is zero is not computed (nor is ``D_g`` trained).

    Args:
        estimates: ``x``, the decoded clean estimate (the guided sample) of every image, (B, 3, H, W), with
            a graph to the x0 latent.
        degraded: ``y``, the inputs, (B, 3, H, W).
        alignments: each image's ``f`` and ``D_g``.
        weights: the weights at this step.
        exposure_patch_size: the pooling size of the exposure loss, in pixels.
        perceptual_distance: ``P`` against precomputed features; ``None`` leaves the perceptual term out.
        degraded_features: the features of ``y`` for ``perceptual_distance``, (B, ...).
    """
    loss = 0.0
    for index, (alignment, x, y) in enumerate(zip(alignments, estimates.split(1), degraded.split(1), strict=True)):
        aligned = alignment.align(x)  # 1. y_hat = f(x)
        image_loss = weights.mse * F.mse_loss(aligned, y)  # 3. MSE(y_hat, y) ...
        if weights.perceptual > 0 and perceptual_distance is not None:
            image_loss = image_loss + weights.perceptual * perceptual_distance(
                aligned, degraded_features[index : index + 1]
            )
        if weights.adversarial > 0:
            alignment.train_residual_discriminator(x, aligned, y)
            image_loss = image_loss + weights.adversarial * alignment.residual_adversarial_term(x, y)
        if weights.exposure > 0:  # 4. the exposure and colour terms (zero weights above their gate)
            image_loss = image_loss + weights.exposure * exposure_loss(x, exposure_patch_size)
        if weights.color > 0:
            image_loss = image_loss + weights.color * color_loss(x)
        loss = loss + image_loss
    return loss
