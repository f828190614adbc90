import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color, data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ldrps_pipeline.evaluation.metrics import psnr, rgb_to_y, ssim, ssim_y

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}


def image_pair(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of two clean images (the astronaut photo and random noise) and a degraded copy."""
    generator = torch.Generator().manual_seed(0)
    photo = transform.resize(data.astronaut(), (48, 40), anti_aliasing=True)
    clean = torch.stack(
        [
            torch.from_numpy(photo).permute(2, 0, 1),
            torch.rand(3, 48, 40, generator=generator, dtype=torch.float64),
        ]
    ).clamp(0, 1)
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return noisy.to(dtype), clean.to(dtype)


def to_numpy(image: torch.Tensor) -> np.ndarray:
    return image.double().permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_psnr_matches_skimage(dtype, tolerance):
    estimate, reference = image_pair(dtype)
    values = psnr(estimate, reference)
    assert values.shape == (2,)
    expected = [
        peak_signal_noise_ratio(to_numpy(r), to_numpy(e), data_range=1.0)
        for e, r in zip(estimate, reference, strict=True)
    ]
    np.testing.assert_allclose(values.double().numpy(), expected, atol=tolerance)


def test_psnr_data_range_and_identical_images():
    estimate, reference = image_pair()
    torch.testing.assert_close(psnr(255 * estimate, 255 * reference, data_range=255.0), psnr(estimate, reference))
    assert psnr(reference, reference).isinf().all()
    assert psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)).item() == pytest.approx(20.0)


def test_rgb_to_y_matches_skimage_ycbcr():
    estimate, _ = image_pair()
    expected = color.rgb2ycbcr(to_numpy(estimate[0]))[..., 0] / 255
    np.testing.assert_allclose(rgb_to_y(estimate)[0, 0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ssim_y_matches_skimage(dtype, tolerance):
    estimate, reference = image_pair(dtype)
    values = ssim_y(estimate, reference)
    assert values.shape == (2,)
    estimate_y, reference_y = rgb_to_y(estimate.double()), rgb_to_y(reference.double())
    expected = [
        structural_similarity(e[0].numpy(), r[0].numpy(), **SKIMAGE_SSIM)
        for e, r in zip(estimate_y, reference_y, strict=True)
    ]
    np.testing.assert_allclose(values.double().numpy(), expected, atol=tolerance)
    assert 0.2 < values.min() < values.max() < 0.99


def test_ssim_rgb_matches_skimage():
    estimate, reference = image_pair()
    expected = [
        structural_similarity(to_numpy(e), to_numpy(r), channel_axis=-1, **SKIMAGE_SSIM)
        for e, r in zip(estimate, reference, strict=True)
    ]
    np.testing.assert_allclose(ssim(estimate, reference).numpy(), expected, atol=1e-10)


def test_ssim_of_identical_images_is_one_and_symmetric():
    estimate, reference = image_pair()
    torch.testing.assert_close(ssim_y(reference, reference), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim_y(estimate, reference), ssim_y(reference, estimate))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.integers(11, 40),
    level=st.floats(0.0, 1.0),
    spread=st.floats(0.0, 0.3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_ssim_never_exceeds_one_for_identical_or_near_identical_images(seed, size, level, spread, dtype):
    """Rounding of the local statistics once gave 1.0000005 for two identical images; SSIM is at most 1."""
    generator = torch.Generator().manual_seed(seed)
    image = (level + spread * torch.randn(1, 3, size, size, generator=generator)).clamp(0, 1).to(dtype)
    near = (image + 1e-7 * torch.randn(image.shape, generator=generator).to(dtype)).clamp(0, 1)
    for other in (image, near):
        for value in (ssim_y(image, other), ssim(image, other)):
            assert torch.all(value <= 1) and torch.all(value >= -1), value


def test_metrics_promote_half_precision():
    estimate, reference = image_pair(torch.float16)
    assert psnr(estimate, reference).dtype == torch.float32
    assert math.isfinite(ssim_y(estimate, reference)[0].item())


@pytest.mark.parametrize("metric", [psnr, ssim, ssim_y])
def test_bad_inputs_raise_value_error(metric):
    with pytest.raises(ValueError, match="same shape"):
        metric(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="shape"):
        metric(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(TypeError):
        metric(torch.ones(1, 3, 16, 16, dtype=torch.uint8), torch.ones(1, 3, 16, 16, dtype=torch.uint8))


def test_ssim_specific_errors():
    with pytest.raises(ValueError, match="channels"):
        ssim_y(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 16), torch.rand(1, 3, 10, 16))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), data_range=0.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), data_range=-1.0)
