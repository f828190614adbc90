"""Classical restoration baselines for the benchmark degradations, mostly from scikit-image.

Every baseline takes a degraded RGB image, ``(B, 3, H, W)`` or ``(3, H, W)`` float in ``[0, 1]``,
and returns the restored image with the same shape, dtype and device, clamped to ``[0, 1]``.
Images are processed one by one as float64 NumPy arrays. Noise levels are standard deviations in
0-255 units, as in :mod:`ldrps_pipeline.evaluation.degradations`.

scikit-image is an optional dependency (``pip install "ldrps-pipeline[bench]"``): it is imported
only when a baseline that needs it runs.

:data:`BASELINES` maps each name of :data:`~ldrps_pipeline.evaluation.degradations.BENCHMARK_DEGRADATIONS` to
its baselines, as ``(name, function)`` pairs that take only the degraded image. Those that need a
noise level estimate it from the image (they are blind), except the oracle, which is given the
true blur kernel.
"""

import importlib
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType, ModuleType

import numpy as np
import torch
from torch import Tensor

from ldrps_pipeline.evaluation.degradations import as_image_batch, bicubic_resize, get_degradation

Baseline = Callable[[Tensor], Tensor]
"""A restoration function: degraded image in, restored image of the same shape out."""


def _skimage(module: str) -> ModuleType:
    """Import ``skimage.<module>``, or fail with an error that names the missing package."""
    try:
        return importlib.import_module(f"skimage.{module}")
    except ImportError as error:
        raise ImportError(
            "this baseline needs scikit-image: pip install scikit-image (or ldrps-pipeline[bench])"
        ) from error


def _per_image(restore: Callable[[np.ndarray], np.ndarray], image: Tensor) -> Tensor:
    """Apply ``restore`` to each image as an ``(H, W, 3)`` float64 array and return a torch batch."""
    batch, unbatched = as_image_batch(image)
    arrays = batch.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    restored = np.stack([restore(array) for array in arrays])
    result = torch.from_numpy(restored).permute(0, 3, 1, 2).clamp(0, 1).to(image)
    return result[0] if unbatched else result


def estimate_noise_sigma(image: Tensor) -> Tensor:
    """Estimate the standard deviation of white Gaussian noise, per image, in 0-255 units.

    The robust wavelet estimator of Donoho and Johnstone: ``median(|d|) / 0.6745`` over the
    diagonal detail coefficients ``d`` of a one-level orthonormal Haar transform (2x2 blocks,
    ``(a - b - c + d) / 2``), computed per channel and averaged over the channels. Like
    scikit-image's ``estimate_sigma`` (which uses Daubechies wavelets and needs PyWavelets), it
    overestimates on strongly textured images and underestimates where values are clipped.

    Returns:
        Shape ``(B,)`` for a batch, a scalar tensor for a single image.
    """
    batch, unbatched = as_image_batch(image)
    even = batch[..., : batch.shape[-2] // 2 * 2, : batch.shape[-1] // 2 * 2]
    if even.shape[-1] == 0 or even.shape[-2] == 0:
        raise ValueError(f"image of shape {tuple(image.shape)} is too small to estimate noise")
    detail = (even[..., 0::2, 0::2] - even[..., 0::2, 1::2] - even[..., 1::2, 0::2] + even[..., 1::2, 1::2]) / 2
    sigma = 255 * detail.abs().flatten(2).median(dim=-1).values.mean(dim=1) / 0.6745
    return sigma[0] if unbatched else sigma


def _check_sigma(sigma: float | None) -> None:
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")


def _sigma_fraction(array: np.ndarray, sigma: float | None) -> float:
    """The noise standard deviation as a fraction of 1: ``sigma / 255``, or estimated if ``None``."""
    if sigma is None:
        return float(estimate_noise_sigma(torch.from_numpy(array).permute(2, 0, 1))) / 255
    return sigma / 255


def nl_means(image: Tensor, sigma: float | None = None) -> Tensor:
    """Non-local means denoising (scikit-image, fast mode, 5x5 patches, 13x13 search window).

    Args:
        image: the noisy image.
        sigma: the noise level in 0-255 units; ``None`` estimates it per image with
            :func:`estimate_noise_sigma`.

    The filter strength is ``h = 0.8 * sigma``, with ``sigma`` also given to the filter.
    """
    _check_sigma(sigma)
    restoration = _skimage("restoration")

    def restore(array: np.ndarray) -> np.ndarray:
        noise = _sigma_fraction(array, sigma)
        return restoration.denoise_nl_means(
            array, h=0.8 * noise, sigma=noise, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
        )

    return _per_image(restore, image)


def tv_chambolle(image: Tensor, sigma: float | None = None) -> Tensor:
    """Total-variation denoising with Chambolle's algorithm (scikit-image), per channel.

    Args:
        image: the noisy image.
        sigma: the noise level in 0-255 units; ``None`` estimates it as :func:`nl_means` does.

    The regularisation weight is ``0.8 * sigma / 255`` (about 0.1 for ``sigma = 30``).
    """
    _check_sigma(sigma)
    restoration = _skimage("restoration")

    def restore(array: np.ndarray) -> np.ndarray:
        weight = 0.8 * _sigma_fraction(array, sigma)
        if weight == 0:  # no noise: nothing to remove (scikit-image divides by the weight)
            return array
        return restoration.denoise_tv_chambolle(array, weight=weight, channel_axis=-1)

    return _per_image(restore, image)


def gamma_correction(image: Tensor, gamma: float | None = None) -> Tensor:
    """Brighten with ``x ** gamma``; NumPy only.

    Args:
        image: the dark image.
        gamma: the exponent, ``> 0``; ``None`` picks, per image, the one that maps the mean value
            ``m`` to 0.5: ``gamma = log(0.5) / log(m)``.
    """
    if gamma is not None and gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")

    def restore(array: np.ndarray) -> np.ndarray:
        exponent = gamma
        if exponent is None:
            mean = float(np.clip(array.mean(), 1e-3, 1 - 1e-3))
            exponent = np.log(0.5) / np.log(mean)
        return array**exponent

    return _per_image(restore, image)


def histogram_equalization(image: Tensor) -> Tensor:
    """Global histogram equalisation of the HSV value channel (scikit-image); hue and saturation kept."""
    color, exposure = _skimage("color"), _skimage("exposure")

    def restore(array: np.ndarray) -> np.ndarray:
        hsv = color.rgb2hsv(array)
        hsv[..., 2] = exposure.equalize_hist(hsv[..., 2])
        return color.hsv2rgb(hsv)

    return _per_image(restore, image)


def bicubic_upsample(image: Tensor, factor: int = 4) -> Tensor:
    """Bicubic super-resolution of a low-resolution image by ``factor``; torch only.

    The same interpolation as ``BicubicDownsample(upsample_back=True)``: the benchmark's "sr_x4"
    degradation already returns this result at the clean size, so there the baseline is
    :func:`identity`.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    batch, unbatched = as_image_batch(image)
    height, width = batch.shape[-2:]
    result = bicubic_resize(batch, (height * factor, width * factor))
    return result[0] if unbatched else result


def identity(image: Tensor) -> Tensor:
    """The degraded image itself (checked and returned as is)."""
    as_image_batch(image)
    return image


def richardson_lucy_oracle(image: Tensor, kernel: Tensor, num_iter: int = 30) -> Tensor:
    """Richardson-Lucy deconvolution (scikit-image) with the TRUE blur kernel: an oracle baseline.

    The image is reflect-padded by half the kernel before deconvolution and cropped afterwards,
    which matches the borders of :class:`~ldrps_pipeline.evaluation.degradations.GaussianBlur`.

    Args:
        image: the blurred image.
        kernel: the exact point-spread function, a 2-D tensor (e.g. ``GaussianBlur(...).kernel``).
        num_iter: the number of Richardson-Lucy iterations, ``>= 1``.
    """
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be a 2-D tensor of odd sides, got shape {tuple(kernel.shape)}")
    if num_iter < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    restoration = _skimage("restoration")
    psf = kernel.detach().to("cpu", torch.float64).numpy()
    pad_y, pad_x = psf.shape[0] // 2, psf.shape[1] // 2

    def restore(array: np.ndarray) -> np.ndarray:
        padded = np.pad(array, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
        channels = [restoration.richardson_lucy(padded[..., c], psf, num_iter=num_iter) for c in range(3)]
        return np.stack(channels, axis=-1)[pad_y : pad_y + array.shape[0], pad_x : pad_x + array.shape[1]]

    return _per_image(restore, image)


def median_filter(image: Tensor, size: int = 5, bright_only: bool = False) -> Tensor:
    """Per-channel median filter over a ``size x size`` square (scikit-image), for rain streaks.

    Args:
        image: the rainy image.
        size: the odd side of the filter window, ``>= 1``; streaks narrower than about half of it
            are removed.
        bright_only: replace only the pixels brighter than their local median, ``min(x, median)``:
            rain only brightens, so this keeps dark details that a plain median blurs away.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    filters = _skimage("filters")
    footprint = np.ones((size, size), dtype=bool)

    def restore(array: np.ndarray) -> np.ndarray:
        median = np.stack([filters.median(array[..., c], footprint) for c in range(3)], axis=-1)
        return np.minimum(array, median) if bright_only else median

    return _per_image(restore, image)


def _nl_means_then_gamma(image: Tensor) -> Tensor:
    """Denoise first (blind non-local means), then brighten, so that the noise is not amplified."""
    return gamma_correction(nl_means(image))


BASELINES: Mapping[str, tuple[tuple[str, Baseline], ...]] = MappingProxyType(
    {
        "noise": (("nl-means", nl_means), ("tv-chambolle", tv_chambolle)),
        "lowlight": (("gamma", gamma_correction), ("histogram-equalization", histogram_equalization)),
        "haze": (),
        "grayscale": (),
        "blur": (
            (
                "richardson-lucy-oracle",
                partial(richardson_lucy_oracle, kernel=get_degradation("blur").kernel),
            ),
        ),
        "sr_x4": (("bicubic", identity),),
        "rain": (("median", median_filter), ("median-bright-only", partial(median_filter, bright_only=True))),
        "lowlight+noise": (("nl-means+gamma", _nl_means_then_gamma),),
        "grayscale+noise": (("nl-means", nl_means),),
    }
)
"""Baselines per benchmark degradation name, as read-only ``(name, function)`` pairs.

"haze" and "grayscale" have none (no classical method is provided); "sr_x4" lists :func:`identity`
because its degraded image already is the bicubic upsampling.
"""


def get_baselines(name: str) -> tuple[tuple[str, Baseline], ...]:
    """The ``(name, function)`` baselines of the benchmark degradation ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown degradation {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name]
