import math

import pytest
import torch

from ldrps_pipeline.guidance_ldrps import PosteriorState, color_loss, exposure_loss, posterior_loss
from ldrps_pipeline.scheduling_ldrps import GuidanceWeights


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


class FakeAlignment:
    """f(x) = x / 2, a constant adversarial term 3, and a count of D_g's training steps."""

    def __init__(self):
        self.discriminator_steps = 0

    def align(self, estimate):
        return estimate / 2

    def train_residual_discriminator(self, estimate, aligned, degraded):
        assert torch.equal(aligned, estimate / 2)
        self.discriminator_steps += 1

    def residual_adversarial_term(self, estimate, degraded):
        assert self.discriminator_steps, "D_g takes its step before G is computed"
        return torch.tensor(3.0)


def weights(mse=1.0, perceptual=0.0, adversarial=0.0, exposure=0.0, color=0.0):
    return GuidanceWeights(mse=mse, perceptual=perceptual, adversarial=adversarial, exposure=exposure, color=color)


def forbidden(*args):
    raise AssertionError("a zero-weight term must not be computed")


def test_posterior_loss_sums_the_weighted_terms_and_skips_zero_weights():
    g = torch.Generator().manual_seed(0)
    estimate, degraded, features = (torch.rand(1, 3, 8, 8, generator=g) for _ in range(3))
    alignment = FakeAlignment()
    common = {"exposure_patch_size": 4, "degraded_features": features}
    plain = posterior_loss(estimate, degraded, [alignment], weights(), perceptual_distance=forbidden, **common)
    assert plain.item() == pytest.approx(((estimate / 2 - degraded) ** 2).mean().item())
    assert alignment.discriminator_steps == 0

    def perceptual_distance(aligned, reference_features):
        assert torch.equal(reference_features, features)
        return torch.tensor(4.0)

    full = posterior_loss(
        estimate,
        degraded,
        [alignment],
        weights(mse=2.0, perceptual=0.5, adversarial=0.1, exposure=0.2, color=0.3),
        perceptual_distance=perceptual_distance,
        **common,
    )
    expected = 2 * plain + 0.5 * 4 + 0.1 * 3 + 0.2 * exposure_loss(estimate, 4) + 0.3 * color_loss(estimate)
    assert full.item() == pytest.approx(expected.item(), rel=1e-5)
    assert alignment.discriminator_steps == 1
    # Without a perceptual component the perceptual weight is left out.
    unweighted = posterior_loss(estimate, degraded, [alignment], weights(perceptual=0.5), exposure_patch_size=4)
    assert torch.equal(unweighted, plain)


def test_posterior_loss_is_the_sum_over_images_with_each_images_own_alignment_and_features():
    g = torch.Generator().manual_seed(1)
    estimates, degraded, features = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    alignments = [FakeAlignment(), FakeAlignment()]
    seen = []

    def perceptual_distance(aligned, reference_features):
        seen.append(reference_features)
        return torch.tensor(1.0)

    every = weights(perceptual=1.0, adversarial=1.0, exposure=1.0, color=1.0)
    both = posterior_loss(
        estimates,
        degraded,
        alignments,
        every,
        exposure_patch_size=4,
        perceptual_distance=perceptual_distance,
        degraded_features=features,
    )
    separate = [
        posterior_loss(
            estimates[i : i + 1],
            degraded[i : i + 1],
            [FakeAlignment()],
            every,
            exposure_patch_size=4,
            perceptual_distance=perceptual_distance,
            degraded_features=features[i : i + 1],
        )
        for i in range(2)
    ]
    assert both.item() == pytest.approx(sum(separate).item(), rel=1e-6)
    assert [a.discriminator_steps for a in alignments] == [1, 1]
    assert torch.equal(seen[0], features[:1]) and torch.equal(seen[1], features[1:])


def test_shift_sample_zero_moves_only_sample_zero_of_every_image():
    latents = torch.zeros(2 * 3, 4, 2, 2)  # two images, three samples each
    state = PosteriorState(
        trainers=[],
        degraded=torch.zeros(2, 3, 8, 8),
        num_samples=3,
        scale=1.0,
        exposure_patch_size=4,
        perceptual_distance=None,
        degraded_features=None,
    )
    shift = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 2.0)])
    shifted = state.shift_sample_zero(latents, shift)
    assert shifted.shape == latents.shape
    assert shifted[0].eq(1).all() and shifted[3].eq(2).all()
    assert shifted[[1, 2, 4, 5]].eq(0).all()
