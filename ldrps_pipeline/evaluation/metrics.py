"""Full-reference image quality metrics, computed per image on torch tensors.

All metrics take two batches of the same shape ``(B, C, H, W)`` (RGB ``C = 3`` where stated), with
values in ``[0, data_range]``, and return one value per image: a tensor of shape ``(B,)``. They
are computed in at least float32 precision on the inputs' device. :func:`psnr` and :func:`ssim`
agree with scikit-image's ``peak_signal_noise_ratio`` and ``structural_similarity`` (with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``); :func:`ssim_y` is the SSIM on
the luma channel reported by most image-restoration papers.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW_SIZE = 11
SSIM_WINDOW_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: Tensor, y: Tensor, channels: int | None = None) -> tuple[Tensor, Tensor]:
    """Check two ``(B, C, H, W)`` float batches of equal shape and promote them to >= float32."""
    for name, image in (("x", x), ("y", y)):
        if not isinstance(image, Tensor) or not image.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(image).__name__}")
        if image.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(image.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got shape {tuple(x.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all channels and pixels of each image.

    Args:
        x: the estimate, ``(B, C, H, W)``.
        y: the reference, same shape.
        data_range: the difference between the largest and smallest possible values.

    Returns:
        ``10 * log10(data_range ** 2 / MSE)`` per image, shape ``(B,)``; ``inf`` where ``x == y``.
    """
    x, y = _check_pair(x, y)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = (x - y).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range**2 / mse)


def rgb_to_y(image: Tensor) -> Tensor:
    """The BT.601 luma of an RGB batch in ``[0, 1]``, studio range as MATLAB's ``rgb2ycbcr``.

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``, in ``[16 / 255, 235 / 255]``: the Y channel
    that image-restoration papers (and BasicSR, pyiqa) evaluate SSIM on.

    Args:
        image: ``(B, 3, H, W)`` RGB in ``[0, 1]``.

    Returns:
        ``(B, 1, H, W)``.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an RGB batch of shape (B, 3, H, W), got {tuple(image.shape)}")
    weights = torch.tensor((65.481, 128.553, 24.966), dtype=image.dtype, device=image.device)
    return (16 + torch.einsum("bchw,c->bhw", image, weights).unsqueeze(1)) / 255


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(SSIM_WINDOW_SIZE, dtype=dtype, device=device) - SSIM_WINDOW_SIZE // 2
    weights = torch.exp(-(offsets**2) / (2 * SSIM_WINDOW_SIGMA**2))
    weights = weights / weights.sum()
    return torch.outer(weights, weights)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al., 2004), averaged over channels and pixels of each image.

    Local statistics use an 11x11 Gaussian window of standard deviation 1.5 and population
    (biased) variances, with ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2`` for ``L = data_range``.
    The SSIM map is averaged over the "valid" region only (5 pixels are left out at each border),
    as in scikit-image.

    Args:
        x: the estimate, ``(B, C, H, W)`` with ``H, W >= 11``.
        y: the reference, same shape.
        data_range: the difference between the largest and smallest possible values.

    Returns:
        The mean SSIM per image, shape ``(B,)``.
    """
    x, y = _check_pair(x, y)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if min(x.shape[-2:]) < SSIM_WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} pixels")
    channels = x.shape[1]
    window = _gaussian_window(x.dtype, x.device).expand(channels, 1, -1, -1)

    def local_mean(image: Tensor) -> Tensor:
        return F.conv2d(image, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    # Each pixel's SSIM is at most 1 (2 mu_x mu_y <= mu_x^2 + mu_y^2 and 2 cov <= var_x + var_y), but the local
    # statistics are differences of rounded means, so the ratio can round above 1 (1.0000005 was measured for two
    # identical images). Clamped per pixel, every mean of the map stays in [-1, 1], since rounding is monotone.
    return (numerator / denominator).clamp(-1.0, 1.0).mean(dim=(1, 2, 3))


def ssim_y(x: Tensor, y: Tensor) -> Tensor:
    """SSIM on the luma channel (:func:`rgb_to_y`) of two RGB batches in ``[0, 1]``, per image.

    Args:
        x: the estimate, ``(B, 3, H, W)`` in ``[0, 1]``, ``H, W >= 11``.
        y: the reference, same shape.

    Returns:
        Shape ``(B,)``.
    """
    x, y = _check_pair(x, y, channels=3)
    return ssim(rgb_to_y(x), rgb_to_y(y), data_range=1.0)
