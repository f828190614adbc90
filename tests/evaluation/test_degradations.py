import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data, transform

from ldrps_pipeline.evaluation.degradations import (
    BENCHMARK_DEGRADATIONS,
    BicubicDownsample,
    Compose,
    GaussianBlur,
    GaussianNoise,
    Grayscale,
    Haze,
    LowLight,
    RainStreaks,
    as_image_batch,
    get_degradation,
)

RANDOM = {"noise", "lowlight", "haze", "rain", "lowlight+noise", "grayscale+noise"}


def astronaut(size: int = 64) -> torch.Tensor:
    """scikit-image's astronaut photo resized to ``(1, 3, size, size)`` float32 in [0, 1]."""
    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().clamp(0, 1)


def flat(value: float = 0.5, size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.full((batch, 3, size, size), value)


def dark_channel(image: torch.Tensor, patch: int = 7) -> torch.Tensor:
    """He et al.'s dark channel: minimum over the channels, then over ``patch x patch`` windows."""
    darkest = image.amin(dim=1, keepdim=True)
    return -torch.nn.functional.max_pool2d(-darkest, patch, stride=1, padding=patch // 2)


def gradient_energy(image: torch.Tensor) -> tuple[float, float]:
    """Mean squared differences along H (vertical) and along W (horizontal)."""
    vertical = image.diff(dim=-2).square().mean().item()
    horizontal = image.diff(dim=-1).square().mean().item()
    return vertical, horizontal


def test_benchmark_names():
    assert set(BENCHMARK_DEGRADATIONS) == RANDOM | {"grayscale", "blur", "sr_x4"}


@pytest.mark.parametrize("name", sorted(BENCHMARK_DEGRADATIONS))
def test_benchmark_degradation_contract(name):
    degradation = get_degradation(name)
    clean = torch.cat([astronaut(64), torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))])
    degraded = degradation(clean, generator=0)
    assert degraded.shape == clean.shape
    assert degraded.dtype == clean.dtype
    assert degraded.min() >= 0 and degraded.max() <= 1
    assert not torch.equal(degraded, clean)
    assert torch.equal(degradation(clean, generator=0), degraded)
    assert torch.equal(degradation(clean, torch.Generator().manual_seed(0)), degraded)
    assert torch.equal(degradation(clean, generator=1), degraded) is (name not in RANDOM)
    single = degradation(clean[0], generator=0)
    assert single.shape == clean.shape[1:]


def test_generator_state_advances():
    generator = torch.Generator().manual_seed(5)
    first = GaussianNoise()(flat(), generator)
    second = GaussianNoise()(flat(), generator)
    assert not torch.equal(first, second)


def test_float64_is_kept():
    degraded = get_degradation("lowlight+noise")(astronaut(32).double(), generator=0)
    assert degraded.dtype == torch.float64


def test_gaussian_noise_std_matches_sigma():
    clean = flat(0.5)
    noise = GaussianNoise(sigma=30.0)(clean, generator=0) - clean
    assert noise.mean().abs() < 0.003
    assert noise.std().item() == pytest.approx(30 / 255, rel=0.03)
    assert torch.equal(GaussianNoise(sigma=0.0)(clean, generator=0), clean)


def test_lowlight_darkens_and_follows_its_formula():
    clean = astronaut(64)
    assert LowLight()(clean, generator=0).mean() < 0.5 * clean.mean()
    noiseless = LowLight(exposure=0.35, gamma=1.8, shot_noise=0.0, read_noise=0.0)(clean)
    torch.testing.assert_close(noiseless, 0.35 * clean**1.8)


def test_lowlight_noise_levels():
    bright = flat(1.0)
    shot = LowLight(exposure=0.35, gamma=1.0, shot_noise=20.0, read_noise=0.0)(bright, generator=0)
    assert shot.mean().item() == pytest.approx(0.35, abs=0.002)
    assert shot.std().item() == pytest.approx(20 / 255 * 0.35**0.5, rel=0.05)
    read = LowLight(exposure=0.35, gamma=1.0, shot_noise=0.0, read_noise=10.0)(bright, generator=0)
    assert read.std().item() == pytest.approx(10 / 255, rel=0.05)


def test_haze_formula_and_transmission_map():
    clean = astronaut(64)
    uniform = Haze(transmission=(0.5, 0.5), atmospheric_light=1.0)(clean, generator=0)
    torch.testing.assert_close(uniform, 0.5 * clean + 0.5)
    haze = Haze(transmission=(0.3, 0.8), grid_size=4)
    t = haze.transmission_map(clean.repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert t.shape == (2, 1, 64, 64)
    assert t.amin().item() == pytest.approx(0.3, abs=1e-5)
    assert t.amax().item() == pytest.approx(0.8, abs=1e-5)
    assert not torch.equal(t[0], t[1])
    vertical, horizontal = gradient_energy(t)
    assert max(vertical, horizontal) < 1e-3  # smooth: neighbouring pixels differ by ~1% at most


def test_haze_raises_dark_channel_and_lowers_contrast():
    clean = astronaut(64)
    hazy = get_degradation("haze")(clean, generator=0)
    assert dark_channel(hazy).mean() > dark_channel(clean).mean() + 0.2
    assert hazy.std() < 0.8 * clean.std()


def test_grayscale_is_bt601_luma_on_three_channels():
    clean = astronaut(32)
    gray = Grayscale()(clean)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    luma = 0.299 * clean[:, 0] + 0.587 * clean[:, 1] + 0.114 * clean[:, 2]
    torch.testing.assert_close(gray[:, 0], luma)
    torch.testing.assert_close(Grayscale()(gray), gray)


def test_gaussian_blur_kernel_is_the_exact_psf():
    blur = GaussianBlur(sigma=2.0)
    kernel = blur.kernel
    assert kernel.shape == (13, 13) and blur.size == 13
    assert kernel.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(kernel, kernel.T)
    clean = astronaut(48).double()
    blurred = blur(clean)
    image = clean[0].numpy()
    expected = np.stack([ndimage.convolve(channel, kernel.numpy(), mode="mirror") for channel in image])
    np.testing.assert_allclose(blurred[0].numpy(), expected, atol=1e-12)
    assert GaussianBlur(sigma=1.0, kernel_size=3).kernel.shape == (3, 3)


def test_gaussian_blur_lowers_high_frequencies_and_keeps_flat_images():
    clean = astronaut(64)
    blurred = get_degradation("blur")(clean)
    assert sum(gradient_energy(blurred)) < 0.3 * sum(gradient_energy(clean))
    torch.testing.assert_close(GaussianBlur(sigma=3.0)(flat(0.3)), flat(0.3))


def test_bicubic_downsample_sizes():
    clean = astronaut(64)
    low = BicubicDownsample(factor=4)(clean)
    assert low.shape == (1, 3, 16, 16)
    back = get_degradation("sr_x4")(clean)
    assert back.shape == clean.shape
    assert sum(gradient_energy(back)) < 0.5 * sum(gradient_energy(clean))
    torch.testing.assert_close(BicubicDownsample(factor=4, upsample_back=True)(flat(0.7)), flat(0.7))
    with pytest.raises(ValueError, match="divisible"):
        BicubicDownsample(factor=4)(torch.rand(1, 3, 30, 32))


def test_rain_adds_sparse_bright_streaks():
    clean = astronaut(64)
    rainy = get_degradation("rain")(clean, generator=0)
    residual = rainy - clean
    assert residual.min() >= -1e-6
    assert residual.max() > 0.5
    assert 0.01 < (residual > 0.05).float().mean() < 0.5


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_rain_streaks_follow_their_angle(angle):
    clean = flat(0.2, size=64, batch=1)
    residual = RainStreaks(angle=angle, angle_jitter=0.0)(clean, generator=0) - clean
    vertical, horizontal = gradient_energy(residual)
    along, across = (vertical, horizontal) if angle == 0 else (horizontal, vertical)
    assert along < 0.25 * across


def test_rain_additive_blend_is_brighter_than_screen():
    clean = flat(0.5, batch=1)
    screen = RainStreaks(blend="screen")(clean, generator=0)
    added = RainStreaks(blend="add")(clean, generator=0)
    assert (added >= screen - 1e-6).all() and added.mean() > screen.mean()


def test_compose_applies_in_order_with_one_generator():
    clean = astronaut(32)
    low, noise = LowLight(), GaussianNoise(sigma=15.0)
    generator = torch.Generator().manual_seed(7)
    by_hand = noise(low(clean, generator), generator)
    torch.testing.assert_close(Compose([low, noise])(clean, generator=7), by_hand)
    gray_then_noise = Compose([Grayscale(), GaussianNoise()])(clean, generator=0)
    noise_then_gray = Compose([GaussianNoise(), Grayscale()])(clean, generator=0)
    assert not torch.equal(gray_then_noise[:, 0], gray_then_noise[:, 1])
    assert torch.equal(noise_then_gray[:, 0], noise_then_gray[:, 1])


def test_reprs_show_parameters():
    assert repr(GaussianNoise(sigma=30.0)) == "GaussianNoise(sigma=30.0)"
    assert repr(Grayscale()) == "Grayscale()"
    assert repr(Compose([Grayscale(), GaussianNoise(25.0)])) == (
        "Compose(degradations=(Grayscale(), GaussianNoise(sigma=25.0)))"
    )
    assert "upsample_back=True" in repr(get_degradation("sr_x4"))


def test_degradations_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_degradation("noise").sigma = 50.0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(3, 8), "shape"),
        (torch.rand(1, 1, 3, 8, 8), "shape"),
        (torch.rand(1, 1, 8, 8), "3 \\(RGB\\) channels"),
        (torch.rand(4, 8, 8), "3 \\(RGB\\) channels"),
        (2 * torch.ones(3, 8, 8), "values in \\[0, 1\\]"),
    ],
    ids=["rank-2", "rank-5", "one-channel", "four-channels", "above-one"],
)
def test_bad_images_raise_value_error(image, message):
    with pytest.raises(ValueError, match=message):
        GaussianNoise()(image)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError):
        as_image_batch(torch.ones(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError):
        GaussianNoise()(torch.rand(3, 8, 8), generator=1.5)
    with pytest.raises(TypeError):
        Compose([GaussianNoise(), lambda image: image])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: GaussianNoise(sigma=-1.0), "sigma"),
        (lambda: LowLight(read_noise=-1.0), "read_noise"),
        (lambda: LowLight(shot_noise=-1.0), "shot_noise"),
        (lambda: LowLight(exposure=0.0), "exposure"),
        (lambda: LowLight(exposure=1.5), "exposure"),
        (lambda: Haze(transmission=(0.0, 0.5)), "transmission"),
        (lambda: Haze(transmission=(0.8, 0.3)), "transmission"),
        (lambda: Haze(atmospheric_light=(1.0, 0.5)), "atmospheric_light"),
        (lambda: Haze(grid_size=1), "grid_size"),
        (lambda: GaussianBlur(sigma=0.0), "sigma"),
        (lambda: GaussianBlur(sigma=-2.0), "sigma"),
        (lambda: GaussianBlur(kernel_size=4), "kernel_size"),
        (lambda: BicubicDownsample(factor=0), "factor"),
        (lambda: RainStreaks(densities=(0.01,), lengths=(5, 9)), "densities and lengths"),
        (lambda: RainStreaks(angle_jitter=-1.0), "angle_jitter"),
        (lambda: RainStreaks(intensity=1.5), "intensity"),
        (lambda: RainStreaks(blend="multiply"), "blend"),
        (lambda: Compose([]), "at least one degradation"),
        (lambda: get_degradation("snow"), "unknown degradation 'snow'"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_blur_kernel_larger_than_image_raises_value_error():
    with pytest.raises(ValueError, match="too small"):
        GaussianBlur(sigma=2.0)(torch.rand(1, 3, 6, 6))


def test_known_operators_are_the_deterministic_parts():
    clean = astronaut(32)
    expected = {
        "noise": clean,
        "lowlight": 0.35 * clean**1.8,
        "grayscale": Grayscale()(clean),
        "blur": get_degradation("blur")(clean),
        "sr_x4": get_degradation("sr_x4")(clean),
        "lowlight+noise": 0.35 * clean**1.8,
        "grayscale+noise": Grayscale()(clean),
    }
    for name, degradation in BENCHMARK_DEGRADATIONS.items():
        if name in expected:
            torch.testing.assert_close(degradation.operator(clean), expected[name], rtol=0, atol=1e-6)
        else:  # a random transmission map or rain streaks: no operator models them
            assert degradation.operator is None, name
    assert BicubicDownsample(factor=4).operator is None  # its output is smaller than the image
    assert Compose([GaussianBlur(1.0), RainStreaks()]).operator is None
    assert LowLight(exposure=0.5, gamma=2.0).operator(flat(0.5)).mean().item() == pytest.approx(0.125)
