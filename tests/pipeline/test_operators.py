"""Known-operator mode: the built-in operators against the package's degradations and independent references,
their gradients, the name registry, and the pipeline with an operator in place of the learned ``f``."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from ldrps_pipeline import LDRPSPipeline, pipeline_ldrps
from ldrps_pipeline.evaluation.degradations import GaussianNoise, LowLight, get_degradation
from ldrps_pipeline.operators_ldrps import (
    OPERATORS,
    BicubicDownsampleOperator,
    ComposedOperator,
    GaussianBlurOperator,
    GrayscaleOperator,
    KnownOperatorAlignment,
    LowLightOperator,
    resolve_operator,
)
from tiny_components import tiny_components, tiny_image

STEPS = 10  # pass 0: 901, 801, ..., 1 (7 below the gate of 700); one recurrence of 5 (401, ..., 1)
GUIDED_STEPS = 7 + 5


def photo(height=32, width=24, batch=2, seed=0):
    """Random images with detail at every scale, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (
        0.5 * torch.rand(batch, 3, height, width, generator=g) + 0.5 * tiny_image(height, width, batch, seed)
    ).clamp(0, 1)


# The benchmark degradation each built-in operator is the noiseless part of, and that degradation without noise.
NOISELESS = {
    "identity": ("noise", GaussianNoise(sigma=0.0)),
    "downsample_x4": ("sr_x4", get_degradation("sr_x4")),
    "blur": ("blur", get_degradation("blur")),
    "grayscale": ("grayscale", get_degradation("grayscale")),
    "lowlight": ("lowlight", LowLight(exposure=0.35, gamma=1.8, shot_noise=0.0, read_noise=0.0)),
}


def test_every_builtin_operator_is_named_and_matched_to_a_degradation():
    assert set(OPERATORS) == set(NOISELESS) and "identity" in OPERATORS


@pytest.mark.parametrize("name", sorted(NOISELESS))
def test_builtin_operator_is_the_benchmark_degradation_without_its_noise(name):
    benchmark_name, noiseless = NOISELESS[name]
    image = photo()
    torch.testing.assert_close(OPERATORS[name](image), noiseless(image), rtol=0, atol=1e-6)
    # The benchmark degradation names this very operator (same parameters) as its known operator.
    assert get_degradation(benchmark_name).operator == OPERATORS[name]


def test_builtin_operators_against_independent_references():
    image = photo(batch=1).double()
    luma = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    torch.testing.assert_close(GrayscaleOperator()(image), luma[:, None].expand(-1, 3, -1, -1))
    torch.testing.assert_close(LowLightOperator(exposure=0.5, gamma=2.2)(image), 0.5 * image**2.2)
    blur = GaussianBlurOperator(sigma=1.5)
    expected = np.stack([ndimage.convolve(c, blur.kernel.numpy(), mode="mirror") for c in image[0].numpy()])
    np.testing.assert_allclose(blur(image)[0].numpy(), expected, atol=1e-12)
    low = F.interpolate(image, size=(8, 6), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    back = F.interpolate(low, size=(32, 24), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(BicubicDownsampleOperator(factor=4)(image), back)
    # A side that is not a multiple of the factor: the low-resolution side is side // factor, the size is kept.
    assert BicubicDownsampleOperator(factor=4)(photo(30, 17)).shape == (2, 3, 30, 17)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_builtin_operators_are_differentiable(name):
    image = (0.1 + 0.8 * photo(16, 16, batch=1)).double().requires_grad_()
    assert torch.autograd.gradcheck(OPERATORS[name], (image,), fast_mode=True)
    (gradient,) = torch.autograd.grad(OPERATORS[name](image).square().sum(), image)
    assert gradient.abs().sum() > 0


def test_lowlight_operator_accepts_the_unclamped_estimate():
    estimate = torch.tensor([-0.1, 0.0, 0.5, 1.1]).view(1, 1, 2, 2).expand(1, 3, 2, 2).requires_grad_()
    dark = LowLightOperator()(estimate)
    (gradient,) = torch.autograd.grad(dark.sum(), estimate)
    assert torch.isfinite(dark).all() and torch.isfinite(gradient).all() and dark[0, 0, 0, 0] == 0


def test_composed_operator_applies_in_order():
    image = photo()
    blur_then_gray = ComposedOperator([OPERATORS["blur"], OPERATORS["grayscale"]])
    torch.testing.assert_close(blur_then_gray(image), OPERATORS["grayscale"](OPERATORS["blur"](image)))
    with pytest.raises(ValueError, match="one or more callables"):
        ComposedOperator([])


def test_resolve_operator_names_callables_and_errors():
    assert resolve_operator(None) is None
    assert resolve_operator("blur") is OPERATORS["blur"]

    def halve(x):
        return x / 2

    assert resolve_operator(halve) is halve
    with pytest.raises(ValueError, match=r"unknown operator 'deblur'.*\['blur', 'downsample_x4', 'grayscale'"):
        resolve_operator("deblur")
    with pytest.raises(ValueError, match="operator must be the name of a built-in operator .* or a callable"):
        resolve_operator(2.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianBlurOperator(sigma=0.0)


def test_known_operator_alignment_aligns_with_the_operator_and_has_no_residual_discriminator():
    alignment = KnownOperatorAlignment(OPERATORS["grayscale"])
    image = photo(batch=1)
    assert torch.equal(alignment.align(image), OPERATORS["grayscale"](image))
    assert alignment.train_step(image[None], image, cap_perceptual=True).item() == 0
    with pytest.raises(RuntimeError, match="no residual discriminator"):
        alignment.residual_adversarial_term(image, image)


# ----------------------------------------------------------------------------------------------------------------
# The pipeline with an operator
# ----------------------------------------------------------------------------------------------------------------
class RecordingPipeline(LDRPSPipeline):
    """Records the per-image alignment states it builds."""

    def new_alignment_state(self, *args, **kwargs):
        state = super().new_alignment_state(*args, **kwargs)
        self.states.append(state)
        return state


@pytest.fixture
def pipe():
    pipe = RecordingPipeline(**tiny_components())
    pipe.states = []
    pipe.set_progress_bar_config(disable=True)
    return pipe


def restore(pipe, image, seed=0, posterior_scale=4e6, **kwargs):
    # A tiny random prior needs a large step to move its samples: the scale is far above the paper's.
    pipe.posterior_scheduler = pipe.posterior_scheduler.with_preset("default", posterior_scale=posterior_scale)
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"num_inference_steps": STEPS, "recurrences": 1, "output_type": "pt", **kwargs}
    return pipe(image, prompt="a photo", generator=generator, **kwargs).images


def test_identity_operator_restores_at_the_input_size_and_trains_nothing(pipe):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        restored = restore(pipe, tiny_image(12, 20), operator="identity")
    assert restored.shape == (1, 3, 12, 20) and torch.isfinite(restored).all()
    # No f, D_f or D_g was built: the image's state is the operator.
    assert [type(state) for state in pipe.states] == [KnownOperatorAlignment]
    counts = Counter(event.name for event in profile.events())
    assert {phase: counts[name] for phase, name in pipeline_ldrps.PROFILER_RANGES.items()} == {
        "step": STEPS + 5,
        "unet": STEPS + 5,
        "decode": GUIDED_STEPS + 1,  # sample 0 at the guided steps only (sample 1 only trained f), then the result
        "alignment_training": 0,
        "guidance_loss": GUIDED_STEPS,
        "guidance_backward": GUIDED_STEPS,
    }


def test_operator_guidance_lowers_the_mismatch_and_keeps_the_noise_of_the_seed(pipe):
    y = tiny_image(16, 16, seed=2)
    calls = []

    def identity(x):
        calls.append(x.shape)
        return x

    generators, first_latents = [], []

    def record(pipe, step, t, tensors):
        if t >= 700:  # unguided steps: the latents follow the noise alone
            first_latents[-1].append(tensors["latents"].clone())
        return {}

    results = {}
    for name, operator, scale in (("known", identity, 4e6), ("learned", None, 4e6), ("off", None, 0.0)):
        first_latents.append([])
        generator = torch.Generator().manual_seed(0)
        pipe.posterior_scheduler = pipe.posterior_scheduler.with_preset("default", posterior_scale=scale)
        results[name] = pipe(
            y,
            prompt="a photo",
            operator=operator,
            generator=generator,
            num_inference_steps=STEPS,
            recurrences=1,
            output_type="pt",
            callback_on_step_end=record,
        ).images
        generators.append(generator.get_state())
    # The operator is checked once on y, then applied at every guided step.
    assert len(calls) == 1 + GUIDED_STEPS and set(calls) == {(1, 3, 16, 16)}
    # A seed draws the same numbers with and without an operator: the same noise, the same unguided steps.
    assert all(torch.equal(generators[0], state) for state in generators[1:])
    assert len(first_latents[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*first_latents[:2], strict=True))
    known, off = results["known"], results["off"]
    assert not torch.allclose(known, results["learned"], atol=1e-3)
    assert torch.mean((known - y) ** 2) < 0.8 * torch.mean((off - y) ** 2)


def test_the_adversarial_term_is_off_with_an_operator(pipe):
    # The lowlight preset weights the adversarial term, which needs f's D_g: with an operator it is left out.
    assert pipe.posterior_scheduler.with_preset("lowlight").config.adversarial_weight > 0
    restored = restore(pipe, tiny_image(16, 16), operator="lowlight", preset="lowlight", num_inference_steps=4)
    assert torch.isfinite(restored).all()
    assert pipe.posterior_scheduler.with_preset("lowlight").config.adversarial_weight > 0  # the component unchanged


def test_bad_operators_are_refused_before_any_model_runs(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "unet", None)
    image = tiny_image(16, 16)
    with pytest.raises(ValueError, match=r"unknown operator 'sharpen'; the built-in operators are \['blur'"):
        restore(pipe, image, operator="sharpen")
    with pytest.raises(ValueError, match="operator must be the name of a built-in operator"):
        restore(pipe, image, operator=torch.ones(3))
    with pytest.raises(ValueError, match=r"input's shape \(1, 3, 16, 16\), got \(1, 3, 8, 8\)"):
        restore(pipe, image, operator=lambda x: x[..., ::2, ::2])
