"""Synthetic image degradations for benchmarking restoration methods.

Every degradation is a small frozen object: its constructor takes the physical parameters, and
calling it on an image returns the degraded image. Conventions shared by all of them:

- images are float tensors of shape ``(B, 3, H, W)`` (or ``(3, H, W)``, returned with the same
  rank) with values in ``[0, 1]``; outputs are clamped to ``[0, 1]``;
- random degradations take a ``generator``: a ``torch.Generator``, or an ``int`` seed that makes a
  fresh CPU generator (so a seed gives the same result on every device), or ``None`` to draw from
  torch's global random state. The same seed always gives the same output;
- noise levels are standard deviations in 0-255 units (``sigma=30`` means ``30 / 255``).

The named degradations of the benchmark are available through :func:`get_degradation`. A degradation's
:attr:`~Degradation.operator` is its deterministic part, the pipeline's known operator
(``ldrps_pipeline.operators_ldrps``) that it applies before its noise: the degradations compute that part with
it, so the two always agree.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ldrps_pipeline.operators_ldrps import (
    BicubicDownsampleOperator,
    ComposedOperator,
    GaussianBlurOperator,
    GrayscaleOperator,
    IdentityOperator,
    LowLightOperator,
    Operator,
    bicubic_resize,
)

Seed = torch.Generator | int | None
"""A source of randomness: a generator, an integer seed (fresh CPU generator), or ``None``."""


def as_image_batch(image: Tensor) -> tuple[Tensor, bool]:
    """Check that ``image`` is an RGB float image in ``[0, 1]`` and return it as a batch.

    Args:
        image: a float tensor of shape ``(B, 3, H, W)`` or ``(3, H, W)`` with values in ``[0, 1]``.

    Returns:
        The image as a ``(B, 3, H, W)`` tensor (a view, not a copy) and whether a batch dimension
        was added, so that callers can return a result of the caller's rank.

    Raises:
        TypeError: if ``image`` is not a floating-point tensor.
        ValueError: if its rank, channel count or value range is wrong.
    """
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError(f"expected a floating-point torch.Tensor, got {type(image).__name__}")
    if image.ndim not in (3, 4):
        raise ValueError(f"expected an image of shape (B, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    unbatched = image.ndim == 3
    batch = image.unsqueeze(0) if unbatched else image
    if batch.shape[1] != 3:
        raise ValueError(f"expected 3 (RGB) channels, got {batch.shape[1]} in shape {tuple(image.shape)}")
    if batch.numel() and (batch.min() < 0 or batch.max() > 1):
        raise ValueError("expected values in [0, 1]; convert 0-255 images with image / 255")
    return batch, unbatched


def _generator(seed: Seed) -> torch.Generator | None:
    if isinstance(seed, bool) or not isinstance(seed, torch.Generator | int | None):
        raise TypeError(f"generator must be a torch.Generator, an int or None, got {type(seed).__name__}")
    if isinstance(seed, int):
        return torch.Generator().manual_seed(seed)
    return seed


def _random(
    kind: Literal["normal", "uniform"], shape: Sequence[int], generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Standard normal or uniform [0, 1) numbers drawn on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


class Degradation(ABC):
    """A degradation: an image in ``[0, 1]`` goes in, its degraded version comes out.

    Subclasses implement :meth:`apply` on a checked ``(B, 3, H, W)`` batch; calling the object
    checks the input, turns a seed into a generator, and clamps the result to ``[0, 1]``.
    """

    def __call__(self, image: Tensor, generator: Seed = None) -> Tensor:
        """Degrade ``image`` (``(B, 3, H, W)`` or ``(3, H, W)`` in ``[0, 1]``), drawing from ``generator``."""
        batch, unbatched = as_image_batch(image)
        degraded = self.apply(batch, _generator(generator)).clamp(0, 1)
        return degraded[0] if unbatched else degraded

    @abstractmethod
    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        """Degrade a checked ``(B, 3, H, W)`` batch; the result is clamped by the caller."""

    @property
    def operator(self) -> Operator | None:
        """The known operator of this degradation: what it does to an image without its noise, an image of the
        same size (``pipe(image, operator=...)``); ``None`` where no operator models it (a random transmission
        map or rain streaks, an output of another size)."""
        return None


@dataclass(frozen=True)
class GaussianNoise(Degradation):
    """Additive white Gaussian noise, independent per pixel and channel.

    Args:
        sigma: standard deviation in 0-255 units.
    """

    sigma: float = 30.0

    def __post_init__(self) -> None:
        _check_non_negative(sigma=self.sigma)

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        return image + self.sigma / 255 * _random("normal", image.shape, generator, image)

    @property
    def operator(self) -> IdentityOperator:
        return IdentityOperator()


@dataclass(frozen=True)
class LowLight(Degradation):
    """An under-exposed, noisy sensor: ``s = exposure * x ** gamma``, then shot and read noise.

    The noisy signal is ``s + (shot_noise / 255) * sqrt(s) * n1 + (read_noise / 255) * n2`` with
    ``n1``, ``n2`` standard normal: the shot noise is the Gaussian approximation of Poisson noise
    (variance proportional to the signal), the read noise is signal-independent.

    Args:
        exposure: the gain applied to the darkened signal, in ``(0, 1]``.
        gamma: the exponent that darkens mid-tones more than highlights, ``> 0``.
        shot_noise: the shot noise standard deviation at full signal (``s = 1``), in 0-255 units.
        read_noise: the read noise standard deviation, in 0-255 units.
    """

    exposure: float = 0.35
    gamma: float = 1.8
    shot_noise: float = 6.0
    read_noise: float = 4.0

    def __post_init__(self) -> None:
        _check_positive(exposure=self.exposure, gamma=self.gamma)
        _check_non_negative(shot_noise=self.shot_noise, read_noise=self.read_noise)
        if self.exposure > 1:
            raise ValueError(f"exposure must be <= 1, got {self.exposure}")

    @property
    def operator(self) -> LowLightOperator:
        return LowLightOperator(exposure=self.exposure, gamma=self.gamma)

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        signal = self.operator(image)
        shot = self.shot_noise / 255 * signal.sqrt() * _random("normal", image.shape, generator, image)
        read = self.read_noise / 255 * _random("normal", image.shape, generator, image)
        return signal + shot + read


@dataclass(frozen=True)
class Haze(Degradation):
    """Atmospheric scattering ``I = J * t + A * (1 - t)`` with a smooth random transmission map.

    The transmission ``t`` is a random field: ``grid_size x grid_size`` uniform control points,
    upsampled bicubically to the image size and stretched to span ``transmission`` exactly (its
    darkest point gets the low end, its clearest point the high end). One map per image, shared by
    the three channels.

    Args:
        transmission: the ``(min, max)`` range of ``t``, ``0 < min <= max <= 1``; lower is hazier.
        atmospheric_light: the airlight ``A``, one value or one per RGB channel, in ``[0, 1]``.
        grid_size: control points per side of the map, ``>= 2``; fewer gives a smoother map.
    """

    transmission: tuple[float, float] = (0.3, 0.8)
    atmospheric_light: float | tuple[float, float, float] = 0.9
    grid_size: int = 4

    def __post_init__(self) -> None:
        low, high = self.transmission
        if not 0 < low <= high <= 1:
            raise ValueError(f"transmission must satisfy 0 < min <= max <= 1, got {self.transmission}")
        light = self._light_values()
        if len(light) != 3 or not all(0 <= value <= 1 for value in light):
            raise ValueError(f"atmospheric_light must be 1 or 3 values in [0, 1], got {light}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {self.grid_size}")

    def _light_values(self) -> tuple[float, ...]:
        light = self.atmospheric_light
        return tuple(light) if isinstance(light, Sequence) else (light,) * 3

    def transmission_map(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw the ``(B, 1, H, W)`` transmission map for a ``(B, 3, H, W)`` image."""
        batch, _, height, width = image.shape
        grid = _random("uniform", (batch, 1, self.grid_size, self.grid_size), generator, image)
        field = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)
        low = field.amin(dim=(2, 3), keepdim=True)
        high = field.amax(dim=(2, 3), keepdim=True)
        unit = (field - low) / (high - low).clamp_min(torch.finfo(field.dtype).eps)
        t_min, t_max = self.transmission
        return t_min + (t_max - t_min) * unit

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        t = self.transmission_map(image, generator)
        light = torch.tensor(self._light_values(), dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return image * t + light * (1 - t)


@dataclass(frozen=True)
class Grayscale(Degradation):
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated to three channels (colourisation)."""

    @property
    def operator(self) -> GrayscaleOperator:
        return GrayscaleOperator()

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.operator(image)


@dataclass(frozen=True)
class GaussianBlur(Degradation):
    """The Gaussian blur of :class:`~ldrps_pipeline.operators_ldrps.GaussianBlurOperator`, with its parameters
    (``sigma`` in pixels, ``kernel_size`` odd or ``None``) and their checks."""

    sigma: float = 2.0
    kernel_size: int | None = None

    def __post_init__(self) -> None:
        GaussianBlurOperator(sigma=self.sigma, kernel_size=self.kernel_size)  # checks the parameters

    @property
    def operator(self) -> GaussianBlurOperator:
        return GaussianBlurOperator(sigma=self.sigma, kernel_size=self.kernel_size)

    @property
    def size(self) -> int:
        """The side of the kernel actually used."""
        return self.operator.size

    @property
    def kernel(self) -> Tensor:
        """The exact point-spread function: a ``(size, size)`` float64 tensor that sums to 1."""
        return self.operator.kernel

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.operator(image)


@dataclass(frozen=True)
class BicubicDownsample(Degradation):
    """Antialiased bicubic downsampling by ``factor`` (super-resolution task).

    By default the result is the low-resolution image, ``(B, 3, H / factor, W / factor)``. With
    ``upsample_back=True`` it is then upsampled bicubically back to ``(H, W)``: the degraded image
    has the clean image's size (as a benchmark that restores at the input's size and compares with
    the clean image needs), and that image is also the classical "bicubic" super-resolution result.

    Args:
        factor: the integer scale factor, ``>= 1``; ``H`` and ``W`` must be divisible by it.
        upsample_back: whether to return the image upsampled back to the clean size.
    """

    factor: int = 4
    upsample_back: bool = False

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    @property
    def operator(self) -> BicubicDownsampleOperator | None:
        """With ``upsample_back``, the operator of the same interpolations; without it, ``None`` (the image shrinks)."""
        return BicubicDownsampleOperator(factor=self.factor) if self.upsample_back else None

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        height, width = image.shape[-2:]
        if height % self.factor or width % self.factor:
            raise ValueError(f"image size {(height, width)} is not divisible by {self.factor}; crop it first")
        if self.upsample_back:
            return self.operator(image)
        return bicubic_resize(image, (height // self.factor, width // self.factor))


@dataclass(frozen=True)
class RainStreaks(Degradation):
    """Synthetic rain: layers of sparse random drops, each smeared into a bright oriented streak.

    Layer ``i`` seeds drops at a fraction ``densities[i]`` of the pixels, with random brightness in
    ``[intensity / 2, intensity]``, and draws each drop as an antialiased line of ``lengths[i]``
    pixels (a motion-blur kernel normalised to a peak of 1). Per image and per layer, the streak
    direction is ``angle`` plus a uniform random offset in ``[-angle_jitter, angle_jitter]``
    degrees, measured from the vertical. Layers are combined, then blended onto the image with a
    screen blend ``1 - (1 - x)(1 - r)`` (never brighter than white) or added (``"add"``).

    Args:
        densities: per layer, the fraction of pixels where a drop starts, in ``[0, 1]``.
        lengths: per layer, the streak length in pixels, ``>= 1``; as many as ``densities``.
        angle: the mean streak direction in degrees from the vertical.
        angle_jitter: the half-range of the random direction offset in degrees, ``>= 0``.
        intensity: the brightest streak value, in ``[0, 1]``.
        blend: ``"screen"`` or ``"add"``.
    """

    densities: tuple[float, ...] = (0.004, 0.002, 0.001)
    lengths: tuple[int, ...] = (9, 15, 23)
    angle: float = 10.0
    angle_jitter: float = 10.0
    intensity: float = 0.8
    blend: Literal["screen", "add"] = "screen"

    def __post_init__(self) -> None:
        if not self.densities or len(self.densities) != len(self.lengths):
            raise ValueError("densities and lengths must be non-empty and of the same length")
        if not all(0 <= density <= 1 for density in self.densities):
            raise ValueError(f"densities must be in [0, 1], got {self.densities}")
        if not all(length >= 1 for length in self.lengths):
            raise ValueError(f"lengths must be >= 1, got {self.lengths}")
        _check_non_negative(angle_jitter=self.angle_jitter)
        if not 0 <= self.intensity <= 1:
            raise ValueError(f"intensity must be in [0, 1], got {self.intensity}")
        if self.blend not in ("screen", "add"):
            raise ValueError(f"blend must be 'screen' or 'add', got {self.blend!r}")

    @staticmethod
    def _streak_kernels(length: int, angles: Tensor) -> Tensor:
        """``(B, 1, k, k)`` antialiased line kernels of ``length`` pixels at ``angles`` (radians)."""
        radius = math.ceil(length / 2)
        offsets = torch.arange(-radius, radius + 1, dtype=angles.dtype, device=angles.device)
        ys, xs = torch.meshgrid(offsets, offsets, indexing="ij")
        dx, dy = angles.sin().view(-1, 1, 1), angles.cos().view(-1, 1, 1)
        along = (xs * dx + ys * dy).clamp(-(length - 1) / 2, (length - 1) / 2)
        distance = torch.hypot(xs - along * dx, ys - along * dy)
        return (1 - distance).clamp_min(0).unsqueeze(1)

    def rain_layer(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw the ``(B, 1, H, W)`` streak intensity for a ``(B, 3, H, W)`` image."""
        batch, _, height, width = image.shape
        clear = torch.ones((batch, 1, height, width), dtype=image.dtype, device=image.device)
        for density, length in zip(self.densities, self.lengths, strict=True):
            seeds = _random("uniform", (batch, 1, height, width), generator, image) < density
            brightness = self.intensity * (1 + _random("uniform", seeds.shape, generator, image)) / 2
            offsets = (2 * _random("uniform", (batch,), generator, image) - 1) * self.angle_jitter
            kernels = self._streak_kernels(length, torch.deg2rad(self.angle + offsets))
            drops = (seeds * brightness).view(1, batch, height, width)
            streaks = F.conv2d(drops, kernels, padding=kernels.shape[-1] // 2, groups=batch)
            clear = clear * (1 - streaks.view(batch, 1, height, width).clamp(0, 1))
        return 1 - clear

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        rain = self.rain_layer(image, generator)
        return 1 - (1 - image) * (1 - rain) if self.blend == "screen" else image + rain


@dataclass(frozen=True, init=False)
class Compose(Degradation):
    """Apply degradations in order, each clamped to ``[0, 1]``, all drawing from one generator.

    Example: ``Compose([LowLight(), GaussianNoise(15)])`` darkens, then adds noise.
    """

    degradations: tuple[Degradation, ...]

    def __init__(self, degradations: Sequence[Degradation]) -> None:
        degradations = tuple(degradations)
        if not degradations:
            raise ValueError("Compose needs at least one degradation")
        for degradation in degradations:
            if not isinstance(degradation, Degradation):
                raise TypeError(f"expected Degradation instances, got {type(degradation).__name__}")
        object.__setattr__(self, "degradations", degradations)

    def apply(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        for degradation in self.degradations:
            image = degradation(image, generator)
        return image

    @property
    def operator(self) -> ComposedOperator | None:
        """The operators of the degradations in order, or ``None`` if one of them has none."""
        operators = [degradation.operator for degradation in self.degradations]
        return None if any(operator is None for operator in operators) else ComposedOperator(operators)


BENCHMARK_DEGRADATIONS: Mapping[str, Degradation] = MappingProxyType(
    {
        "noise": GaussianNoise(sigma=30.0),
        "lowlight": LowLight(exposure=0.35, gamma=1.8, shot_noise=6.0, read_noise=4.0),
        "haze": Haze(transmission=(0.3, 0.8), atmospheric_light=0.9, grid_size=4),
        "grayscale": Grayscale(),
        "blur": GaussianBlur(sigma=2.0),
        "sr_x4": BicubicDownsample(factor=4, upsample_back=True),
        "rain": RainStreaks(),
        "lowlight+noise": Compose([LowLight(), GaussianNoise(sigma=15.0)]),
        "grayscale+noise": Compose([Grayscale(), GaussianNoise(sigma=25.0)]),
    }
)
"""The benchmark's named degradations (read-only); every one returns an image of the clean size."""


def get_degradation(name: str) -> Degradation:
    """Return the benchmark degradation called ``name`` (a key of :data:`BENCHMARK_DEGRADATIONS`).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name not in BENCHMARK_DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {sorted(BENCHMARK_DEGRADATIONS)}")
    return BENCHMARK_DEGRADATIONS[name]
