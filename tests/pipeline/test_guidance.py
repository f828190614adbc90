import math

import pytest
import torch

from ldrps_pipeline.guidance_ldrps import color_loss, exposure_loss, posterior_loss


def test_exposure_loss_hand_computed():
    image = torch.zeros(1, 3, 64, 32)
    image[:, :, :32] = 0.5  # top patch at the target level, bottom patch black
    assert exposure_loss(image, patch_size=32).item() == pytest.approx(0.125)
    # An image smaller than the patch uses one patch of its own size.
    assert exposure_loss(torch.full((1, 3, 10, 7), 0.7), patch_size=32).item() == pytest.approx(0.04, rel=1e-5)


def test_exposure_loss_keeps_the_last_narrower_patches():
    # 40 x 32 with 32 px patches: a full top patch at the target level and an 8-row bottom patch of black.
    image = torch.full((1, 3, 40, 32), 0.5)
    image[:, :, 32:] = 0.0
    assert exposure_loss(image, patch_size=32).item() == pytest.approx(0.125)
    # Every pixel gets a gradient, the ones beyond the last full patch too.
    image = torch.rand(1, 3, 50, 70, requires_grad=True)
    exposure_loss(image, patch_size=32).backward()
    assert (image.grad[..., 32:, :].abs().sum(dim=1) > 0).all() and (image.grad[..., 64:].abs().sum(dim=1) > 0).all()


def test_color_loss_hand_computed():
    image = torch.zeros(1, 3, 4, 4)
    image[:, 0] = 0.6
    image[:, 1] = 0.4
    image[:, 2] = 0.4
    expected = math.sqrt(0.2**4 + 0.2**4 + 0.0)
    assert color_loss(image).item() == pytest.approx(expected, rel=1e-4)
    assert color_loss(torch.full((1, 3, 4, 4), 0.3)).item() == pytest.approx(0.0, abs=1e-5)


def test_posterior_loss_sums_the_weighted_terms_and_skips_zero_weights():
    g = torch.Generator().manual_seed(0)
    aligned, degraded, estimate = (torch.rand(1, 3, 8, 8, generator=g) for _ in range(3))

    def forbidden(*args):
        raise AssertionError("a zero-weight term must not be computed")

    common = {"exposure_patch_size": 4}
    plain = posterior_loss(
        aligned,
        degraded,
        estimate,
        mse_weight=1.0,
        perceptual_weight=0.0,
        adversarial_term=None,
        adversarial_weight=0.0,
        exposure_weight=0.0,
        color_weight=0.0,
        perceptual_to_input=forbidden,
        **common,
    )
    assert plain.item() == pytest.approx(((aligned - degraded) ** 2).mean().item())
    full = posterior_loss(
        aligned,
        degraded,
        estimate,
        mse_weight=2.0,
        perceptual_weight=0.5,
        adversarial_term=torch.tensor(3.0),
        adversarial_weight=0.1,
        exposure_weight=0.2,
        color_weight=0.3,
        perceptual_to_input=lambda a: torch.tensor(4.0),
        **common,
    )
    expected = 2 * plain + 0.5 * 4 + 0.1 * 3 + 0.2 * exposure_loss(estimate, 4) + 0.3 * color_loss(estimate)
    assert full.item() == pytest.approx(expected.item(), rel=1e-5)
