import math

import pytest
import torch

from ldrps_pipeline import NonFiniteSampleError, PerceptualFeatures
from ldrps_pipeline.guidance_ldrps import (
    NonFiniteFlags,
    PosteriorGuidance,
    PosteriorState,
    color_loss,
    exposure_input_gate,
    exposure_loss,
    float16_backward_scale,
    posterior_loss,
)
from ldrps_pipeline.scheduling_ldrps import GuidanceWeights
from tiny_components import tiny_image, tiny_pipeline


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


def test_exposure_loss_tolerance_spares_patches_within_the_band():
    # Patch means 0.5 (at the level), 0.35 (inside 0.5 ± 0.2) and 0.1 (0.2 below the band's floor of 0.3).
    image = torch.zeros(1, 3, 96, 32)
    image[:, :, :32] = 0.5
    image[:, :, 32:64] = 0.35
    image[:, :, 64:] = 0.1
    assert exposure_loss(image, patch_size=32, tolerance=0.2).item() == pytest.approx(0.2**2 / 3, rel=1e-5)
    # Tolerance 0 is the paper's loss: (0 + 0.15^2 + 0.4^2) / 3.
    assert exposure_loss(image, patch_size=32).item() == pytest.approx((0.15**2 + 0.4**2) / 3, rel=1e-5)
    # Inside the band a pixel gets no gradient; below it, a push upwards (a negative gradient).
    image.requires_grad_(True)
    exposure_loss(image, patch_size=32, tolerance=0.2).backward()
    assert (image.grad[..., :64, :] == 0).all() and (image.grad[..., 64:, :] < 0).all()


def test_exposure_input_gate_passes_only_inputs_outside_the_band():
    # Input means 0.1 (dark), 0.35 and 0.65 (inside 0.5 ± 0.3) and 0.9 (bright).
    degraded = torch.stack([torch.full((3, 4, 4), level) for level in (0.1, 0.35, 0.65, 0.9)])
    assert exposure_input_gate(degraded, tolerance=0.3).tolist() == [1.0, 0.0, 0.0, 1.0]
    # Tolerance 0, the paper's: every input, one exactly at the level too.
    assert exposure_input_gate(torch.full((1, 3, 4, 4), 0.5)).tolist() == [1.0]
    # The image's mean decides, not its pixels: half black, half white is not dark.
    half = torch.zeros(1, 3, 4, 4)
    half[..., 2:] = 1.0
    assert exposure_input_gate(half, tolerance=0.3).tolist() == [0.0]


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
    # The exposure term takes the tolerance given.
    banded = posterior_loss(
        estimate, degraded, [alignment], weights(mse=0.0, exposure=1.0), exposure_tolerance=0.1, **common
    )
    assert banded.item() == pytest.approx(exposure_loss(estimate, 4, tolerance=0.1).item(), rel=1e-6)

    # The input gate drops the exposure term of an input inside its band, and keeps it for one outside.
    def gated(level):
        return posterior_loss(
            estimate,
            torch.full_like(degraded, level),
            [alignment],
            weights(mse=0.0, exposure=1.0),
            exposure_input_tolerance=0.3,
            **common,
        )

    assert gated(0.4).item() == 0.0
    assert gated(0.1).item() == pytest.approx(exposure_loss(estimate, 4).item(), rel=1e-6) and gated(0.1).item() > 0
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


def test_posterior_loss_per_image_sums_to_the_batch_loss():
    g = torch.Generator().manual_seed(2)
    estimates, degraded = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    alignments = [FakeAlignment() for _ in range(3)]
    per_image = posterior_loss(estimates, degraded, alignments, weights(), exposure_patch_size=4, reduction="none")
    total = posterior_loss(estimates, degraded, alignments, weights(), exposure_patch_size=4)
    assert per_image.shape == (3,) and per_image.sum().item() == pytest.approx(total.item(), rel=1e-6)
    assert per_image[1].item() == pytest.approx(torch.mean((estimates[1] / 2 - degraded[1]) ** 2).item())


def test_non_finite_flags_record_per_image_without_reading_the_device():
    # On the meta device any read of a value (.item(), bool(), .tolist()) raises: recording reads none.
    meta = NonFiniteFlags(batch_size=2, device="meta")
    meta.record("latents", torch.empty(2 * 3, 4, 2, 2, device="meta"))  # three samples per image
    meta.record("loss", torch.empty(2, device="meta"))
    meta.record("gradient", torch.empty(2, 4, 2, 2, device="meta"))
    with pytest.raises(NotImplementedError):  # check is where the flags are read
        meta.check(0, 1)
    flags = NonFiniteFlags(batch_size=2, device="cpu")
    latents = torch.zeros(2 * 3, 4, 2, 2)
    flags.record("latents", latents)
    flags.check(0, 1)  # all finite: nothing raised
    latents[4, 1, 0, 0] = float("inf")  # image 1, sample 1
    flags.record("latents", latents)
    flags.record("latents", torch.zeros_like(latents))  # the flags stay set once set
    flags.record("loss", torch.tensor([float("nan"), 0.0]))
    with pytest.raises(NonFiniteSampleError) as raised:
        flags.check(2, 3)
    error = raised.value
    assert isinstance(error, ValueError) and error.pass_index == 2 and error.image_indices == [0, 1]
    assert error.faults == {0: ("loss",), 1: ("latents",)}
    assert str(error).startswith("non-finite values in pass 2 (recurrence 2 of 2; image 0: loss; image 1: latents)")


def nan_into_latents(image: int, step: int, steps: list):
    """A step-end callback that writes a NaN into sample 0 of ``image`` at ``step`` and records every step."""

    def callback(pipe, step_index, timestep, tensors):
        steps.append(step_index)
        if step_index == step:
            tensors["latents"][image * pipe.posterior_scheduler.config.num_samples, 0, 0, 0] = float("nan")
        return {"latents": tensors["latents"]}

    return callback


@pytest.fixture
def counted_checks(monkeypatch):
    """The pass numbers at which the non-finite flags were read, in order."""
    checks, check = [], NonFiniteFlags.check

    def counting(flags, pass_index, num_passes):
        checks.append(pass_index)
        return check(flags, pass_index, num_passes)

    monkeypatch.setattr(NonFiniteFlags, "check", counting)
    return checks


def test_nan_latents_raise_at_the_end_of_their_pass_naming_the_image(counted_checks):
    pipe, steps = tiny_pipeline(), []
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(NonFiniteSampleError) as raised:
        pipe(
            tiny_image(16, 16, batch=2),
            prompt="a photo",
            num_inference_steps=6,
            recurrences=2,
            generator=generators,
            output_type="pt",
            callback_on_step_end=nan_into_latents(image=1, step=7, steps=steps),  # in pass 1 (steps 6-8)
        )
    assert raised.value.pass_index == 1 and raised.value.image_indices == [1]
    assert raised.value.faults[1][0] == "latents"  # and what the NaN reached after it: loss, gradient
    assert steps == list(range(9))  # pass 1 ran to its end; pass 2 did not run
    assert counted_checks == [0, 1]  # one read of the flags per pass, none per step


def test_a_non_finite_perceptual_distance_is_named_as_the_loss(counted_checks):
    class NaNDistance(PerceptualFeatures):
        def distance_to_features(self, image, reference_features):
            return torch.tensor(float("nan"))

    pipe = tiny_pipeline(perceptual=NaNDistance(channels=(4, 8)).eval())
    with pytest.raises(NonFiniteSampleError) as raised:
        pipe(tiny_image(16, 16), prompt="a photo", num_inference_steps=6, recurrences=1, output_type="pt")
    assert raised.value.pass_index == 0 and raised.value.faults == {0: ("loss",)}
    assert counted_checks == [0]


def test_a_finite_restoration_reads_the_flags_once_per_pass(counted_checks):
    images = tiny_pipeline()(tiny_image(16, 16), prompt="a photo", num_inference_steps=6, recurrences=2).images
    assert len(images) == 1 and counted_checks == [0, 1, 2]


class Float16Decoder(PosteriorGuidance):
    """A decoder that is the identity through float16, as a float16 VAE's output is."""

    def decode(self, latents, height, width):
        return latents.half().float()


class IdentityAlignment:
    def align(self, estimate):
        return estimate


def test_a_float16_decoder_backward_is_loss_scaled_so_that_small_gradients_do_not_vanish():
    # Values on a grid of 2**-10, exact in float16, so that only the backward's precision is at stake.
    y = torch.randint(0, 1000, (1, 3, 256, 256), generator=torch.Generator().manual_seed(0)) / 1024
    x0 = y + 1 / 1024  # a small mismatch: each pixel's gradient 2**-9 / (3 * 256 * 256) = 1e-8, below float16's range

    def shift(backward_scale):
        state = PosteriorState(
            trainers=[IdentityAlignment()],
            degraded=y,
            num_samples=1,
            scale=1.0,
            exposure_patch_size=32,
            perceptual_distance=None,
            degraded_features=None,
            learns_alignment=False,
            backward_scale=backward_scale,
        )
        return Float16Decoder().posterior_guidance(torch.zeros_like(x0), x0, weights(), state)

    expected = -2 * (x0 - y) / y.numel()  # grad(-scale * MSE) in float32, scale 1
    assert shift(1.0).eq(0).all()  # unscaled, every gradient underflows in the float16 backward
    scaled = shift(float16_backward_scale(256, 256, 1.0))
    assert torch.allclose(scaled, expected, rtol=2e-3, atol=0)


class CountingTrainer:
    """An alignment state that counts its training steps and the guidance gate they were taken under."""

    def __init__(self):
        self.steps = []

    def train_step(self, estimates, degraded, cap_perceptual):
        self.steps.append(cap_perceptual)


@pytest.mark.parametrize(("warmup", "above_gate"), [(0, 3), (10, 3), (10, 12)])
def test_the_first_guided_step_takes_the_warm_up_steps_still_missing(warmup, above_gate):
    trainers = [CountingTrainer(), CountingTrainer()]
    state = PosteriorState(
        trainers=trainers,
        degraded=torch.zeros(2, 3, 4, 4),
        num_samples=2,
        scale=1.0,
        exposure_patch_size=4,
        perceptual_distance=None,
        degraded_features=None,
        aligner_warmup_steps=warmup,
    )
    estimates = torch.zeros(2, 2, 3, 4, 4)
    for _ in range(above_gate):
        state.train_alignment(estimates, cap_perceptual=False)
    for _ in range(5):  # below the gate
        state.train_alignment(estimates, cap_perceptual=True)
    first_guided = max(1, warmup - above_gate)
    for trainer in trainers:  # every image's state takes the same steps
        assert trainer.steps == [False] * above_gate + [True] * (first_guided + 4)
    assert state.alignment_steps == above_gate + first_guided + 4
