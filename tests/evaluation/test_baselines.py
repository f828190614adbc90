import sys
from functools import partial

import pytest
import torch
from skimage import data, transform

from ldrps_pipeline.evaluation.baselines import (
    BASELINES,
    bicubic_upsample,
    estimate_noise_sigma,
    gamma_correction,
    get_baselines,
    histogram_equalization,
    identity,
    median_filter,
    nl_means,
    richardson_lucy_oracle,
    tv_chambolle,
)
from ldrps_pipeline.evaluation.degradations import (
    BENCHMARK_DEGRADATIONS,
    BicubicDownsample,
    GaussianNoise,
    get_degradation,
)
from ldrps_pipeline.evaluation.metrics import psnr

REGISTERED = [
    (name, label, baseline)
    for name, baselines in BASELINES.items()
    for label, baseline in baselines
    if baseline is not identity
]


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """scikit-image's astronaut photo at 128x128, ``(1, 3, 128, 128)`` float32 in [0, 1]."""
    image = transform.resize(data.astronaut(), (128, 128), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().clamp(0, 1)


def test_registry_covers_every_benchmark_degradation():
    assert set(BASELINES) == set(BENCHMARK_DEGRADATIONS)
    assert [label for label, _ in get_baselines("noise")] == ["nl-means", "tv-chambolle"]
    assert "oracle" in get_baselines("blur")[0][0]
    with pytest.raises(ValueError, match="unknown degradation"):
        get_baselines("snow")


@pytest.mark.parametrize(("name", "label", "baseline"), REGISTERED, ids=[f"{n}-{lb}" for n, lb, _ in REGISTERED])
def test_registered_baseline_improves_psnr_on_a_photo(photo, name, label, baseline):
    degraded = get_degradation(name)(photo, generator=0)
    restored = baseline(degraded)
    assert restored.shape == photo.shape and restored.dtype == photo.dtype
    assert restored.min() >= 0 and restored.max() <= 1
    assert psnr(restored, photo).item() > psnr(degraded, photo).item() + 0.5


@pytest.mark.parametrize("denoiser", [nl_means, tv_chambolle])
def test_denoisers_with_the_known_sigma(photo, denoiser):
    degraded = GaussianNoise(sigma=30.0)(photo, generator=0)
    assert psnr(denoiser(degraded, sigma=30.0), photo).item() > psnr(degraded, photo).item() + 3
    torch.testing.assert_close(denoiser(photo, sigma=0.0), photo, atol=1e-6, rtol=0)


def test_noise_sigma_estimate(photo):
    flat = torch.full((1, 3, 64, 64), 0.5)
    for sigma in (10.0, 30.0):
        assert estimate_noise_sigma(GaussianNoise(sigma)(flat, generator=0)).item() == pytest.approx(sigma, rel=0.05)
    on_photo = estimate_noise_sigma(GaussianNoise(30.0)(photo, generator=0)[0])
    assert on_photo.shape == () and on_photo.item() == pytest.approx(30.0, rel=0.2)


def test_gamma_correction(photo):
    torch.testing.assert_close(gamma_correction(photo, gamma=0.5), photo.sqrt())
    dark = 0.35 * photo**1.8
    assert abs(gamma_correction(dark).mean().item() - 0.5) < 0.1


def test_histogram_equalization_spreads_values_and_keeps_gray_gray(photo):
    dark = 0.2 * photo
    equalized = histogram_equalization(dark)
    assert equalized.amax().item() > 0.95 and equalized.mean().item() > 0.4
    gray = dark.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    result = histogram_equalization(gray)
    torch.testing.assert_close(result[:, 0], result[:, 2], atol=1e-6, rtol=0)


def test_bicubic_baseline_matches_the_sr_degradation(photo):
    low = BicubicDownsample(factor=4)(photo)
    upsampled = bicubic_upsample(low, factor=4)
    assert upsampled.shape == photo.shape
    torch.testing.assert_close(upsampled, get_degradation("sr_x4")(photo))
    assert get_baselines("sr_x4") == (("bicubic", identity),)
    assert identity(upsampled) is upsampled
    assert bicubic_upsample(low[0], factor=2).shape == (3, 64, 64)


def test_richardson_lucy_needs_and_uses_the_true_kernel(photo):
    blurred = get_degradation("blur")(photo)
    true_kernel = get_degradation("blur").kernel
    with_true = psnr(richardson_lucy_oracle(blurred, true_kernel), photo).item()
    with_wrong = psnr(richardson_lucy_oracle(blurred, torch.ones(13, 13) / 169), photo).item()
    assert with_true > psnr(blurred, photo).item() + 1 > with_wrong


def test_median_filter_removes_thin_streaks():
    flat = torch.full((1, 3, 32, 32), 0.3)
    streaked = flat.clone()
    streaked[..., 10] = 1.0
    torch.testing.assert_close(median_filter(streaked, size=3), flat)
    dotted = flat.clone()
    dotted[..., 5, 5] = 0.0
    dotted[..., 10] = 1.0
    torch.testing.assert_close(median_filter(dotted, size=3, bright_only=True)[..., 5, 5], torch.zeros(1, 3))
    torch.testing.assert_close(median_filter(dotted, size=3)[..., 5, 5], torch.full((1, 3), 0.3))
    assert median_filter(dotted, size=3, bright_only=True)[..., 10].max() == pytest.approx(0.3)


def test_baselines_keep_rank_dtype_and_batch(photo):
    degraded = GaussianNoise(sigma=20.0)(torch.cat([photo, photo.flip(-1)]).double(), generator=0)
    batch = nl_means(degraded, sigma=20.0)
    assert batch.shape == degraded.shape and batch.dtype == torch.float64
    torch.testing.assert_close(nl_means(degraded[1], sigma=20.0), batch[1])


def test_missing_scikit_image_is_named(monkeypatch, photo):
    monkeypatch.setitem(sys.modules, "skimage.restoration", None)
    with pytest.raises(ImportError, match="scikit-image"):
        nl_means(photo, sigma=30.0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (partial(nl_means, sigma=-1.0), "sigma"),
        (partial(tv_chambolle, sigma=-5.0), "sigma"),
        (partial(gamma_correction, gamma=0.0), "gamma"),
        (partial(median_filter, size=4), "size"),
        (partial(bicubic_upsample, factor=0), "factor"),
        (partial(richardson_lucy_oracle, kernel=torch.ones(4, 4) / 16), "kernel"),
        (partial(richardson_lucy_oracle, kernel=torch.ones(3, 3) / 9, num_iter=0), "num_iter"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(photo, call, name):
    with pytest.raises(ValueError, match=name):
        call(photo)


@pytest.mark.parametrize("baseline", [identity, median_filter, gamma_correction])
def test_bad_images_raise_value_error(baseline):
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        baseline(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        baseline(torch.rand(16, 16))
