"""Known-operator mode: a known, differentiable degradation ``A`` in place of the learned alignment module ``f``.

With ``pipe(image, operator=...)`` the posterior guidance compares ``A(x)`` with the input ``y`` instead of
``f(x)``, and nothing is trained while sampling (no ``f``, no ``D_f``, no ``D_g``). This goes beyond the paper,
whose point is not to know the degradation; where it is known (a camera's blur, a bicubic downscale), the
operator is exact where ``f`` is learned.

An operator is any differentiable callable ``(B, 3, H, W) -> (B, 3, H, W)``: the estimate it gets is the decoded
clean image, about in [0, 1] but not clamped, and the gradient of the guidance flows back through it. The
built-in ones are frozen dataclasses; :data:`OPERATORS` names one of each with the parameters of the package's
benchmark degradations (``ldrps_pipeline.evaluation.degradations``), each of which is exactly that degradation
without its noise. :class:`KnownOperatorAlignment` puts an operator in the place of an image's alignment state
(the ``ImageAlignment`` protocol of ``guidance_ldrps``).

This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor

Operator = Callable[[Tensor], Tensor]
"""A known degradation: clean images (B, 3, H, W) to degraded images of the same shape, differentiable."""

BT601_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G and B (full range)."""


def bicubic_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a ``(B, C, H, W)`` image bicubically to ``size = (height, width)``, clamped to ``[0, 1]``.

    Shrinking is antialiased (like MATLAB's ``imresize``), enlarging is plain bicubic
    interpolation; both use half-pixel centres (``align_corners=False``).
    """
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class IdentityOperator:
    """``A(x) = x``: the known operator of additive noise (denoising)."""

    def __call__(self, image: Tensor) -> Tensor:
        return image


@dataclass(frozen=True)
class BicubicDownsampleOperator:
    """Antialiased bicubic downsampling by ``factor``, then bicubic upsampling back to the input's size, each
    clamped to [0, 1]: the degraded input of super-resolution is the low-resolution image enlarged to the size
    to restore at, so that ``y`` and ``A(x)`` are compared pixel by pixel.

    A side that is not a multiple of ``factor`` is downsampled to ``side // factor`` pixels (at least 1).

    Args:
        factor: the integer scale factor, ``>= 1``.
    """

    factor: int = 4

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        low = bicubic_resize(image, (max(1, height // self.factor), max(1, width // self.factor)))
        return bicubic_resize(low, (height, width))


@dataclass(frozen=True)
class GaussianBlurOperator:
    """Convolution with an isotropic Gaussian point-spread function, reflect padding at the borders.

    Args:
        sigma: the blur's standard deviation in pixels, ``> 0``.
        kernel_size: the odd side of the square kernel; by default ``2 * ceil(3 * sigma) + 1``.
            The image must be larger than half the kernel in both dimensions.
    """

    sigma: float = 2.0
    kernel_size: int | None = None

    def __post_init__(self) -> None:
        _check_positive(sigma=self.sigma)
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")

    @property
    def size(self) -> int:
        """The side of the kernel actually used."""
        return self.kernel_size if self.kernel_size is not None else 2 * math.ceil(3 * self.sigma) + 1

    def kernel_1d(self) -> Tensor:
        """The normalised 1-D Gaussian of the separable kernel, ``(size,)`` float64."""
        offsets = torch.arange(self.size, dtype=torch.float64) - self.size // 2
        weights = torch.exp(-(offsets**2) / (2 * self.sigma**2))
        return weights / weights.sum()

    @property
    def kernel(self) -> Tensor:
        """The exact point-spread function: a ``(size, size)`` float64 tensor that sums to 1."""
        weights = self.kernel_1d()
        return torch.outer(weights, weights)

    def __call__(self, image: Tensor) -> Tensor:
        radius = self.size // 2
        if min(image.shape[-2:]) <= radius:
            raise ValueError(
                f"image of size {tuple(image.shape[-2:])} is too small for a {self.size}-pixel blur kernel"
            )
        weights = self.kernel_1d().to(image)
        channels = image.shape[1]
        padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
        rows = F.conv2d(padded, weights.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(rows, weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@dataclass(frozen=True)
class GrayscaleOperator:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated to three channels (colourisation)."""

    def __call__(self, image: Tensor) -> Tensor:
        weights = torch.tensor(BT601_LUMA_WEIGHTS, dtype=image.dtype, device=image.device)
        luma = torch.einsum("bchw,c->bhw", image, weights).unsqueeze(1)
        return luma.expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class LowLightOperator:
    """Under-exposure ``exposure * x ** gamma`` (negative values of the unclamped estimate count as 0).

    Args:
        exposure: the gain applied to the darkened signal, ``> 0``.
        gamma: the exponent that darkens mid-tones more than highlights, ``> 0``.
    """

    exposure: float = 0.35
    gamma: float = 1.8

    def __post_init__(self) -> None:
        _check_positive(exposure=self.exposure, gamma=self.gamma)

    def __call__(self, image: Tensor) -> Tensor:
        return self.exposure * image.clamp_min(0) ** self.gamma


@dataclass(frozen=True, init=False)
class ComposedOperator:
    """Operators applied in order: ``ComposedOperator([GaussianBlurOperator(1.0), BicubicDownsampleOperator(4)])``
    blurs, then downsamples and enlarges back."""

    operators: tuple[Operator, ...]

    def __init__(self, operators: Sequence[Operator]) -> None:
        operators = tuple(operators)
        if not operators or not all(callable(operator) for operator in operators):
            raise ValueError(f"ComposedOperator needs one or more callables, got {operators!r}")
        object.__setattr__(self, "operators", operators)

    def __call__(self, image: Tensor) -> Tensor:
        for operator in self.operators:
            image = operator(image)
        return image


OPERATORS: Mapping[str, Operator] = MappingProxyType(
    {
        "identity": IdentityOperator(),
        "downsample_x4": BicubicDownsampleOperator(factor=4),
        "blur": GaussianBlurOperator(sigma=2.0),
        "grayscale": GrayscaleOperator(),
        "lowlight": LowLightOperator(exposure=0.35, gamma=1.8),
    }
)
"""The built-in operators by name (read-only), with the parameters of the package's benchmark degradations:
``identity`` (noise), ``downsample_x4`` (``sr_x4``), ``blur``, ``grayscale``, ``lowlight``. Other parameters:
pass an operator object, e.g. ``GaussianBlurOperator(sigma=3.0)``."""


def resolve_operator(operator: str | Operator | None) -> Operator | None:
    """The operator a call asks for: a name of :data:`OPERATORS`, a callable (returned as it is), or ``None``.

    Raises:
        ValueError: for an unknown name (the message lists the built-in ones) or an object that is not callable.
    """
    if isinstance(operator, str):
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}; the built-in operators are {sorted(OPERATORS)}")
        return OPERATORS[operator]
    if operator is None or callable(operator):
        return operator
    raise ValueError(
        f"operator must be the name of a built-in operator ({sorted(OPERATORS)}) or a callable "
        f"(B, 3, H, W) -> (B, 3, H, W), got {type(operator).__name__}"
    )


def check_operator_output(operator: Operator, image: Tensor) -> None:
    """Raise a ``ValueError`` naming both shapes unless ``operator(image)`` is a tensor of ``image``'s shape (the
    estimates it will get have the shape of the input ``image``)."""
    output = operator(image)
    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
    if shape != tuple(image.shape):
        raise ValueError(
            f"the operator must return a tensor of its input's shape {tuple(image.shape)}, got {shape} "
            "(a downsampling operator must enlarge its result back, as BicubicDownsampleOperator does)"
        )


class KnownOperatorAlignment:
    """An image's alignment state in known-operator mode (the ``ImageAlignment`` protocol of ``guidance_ldrps``):
    ``A(x)`` in place of ``f(x)``, and nothing to train.

    There is no residual discriminator ``D_g`` (it learns from ``f``'s residuals), so the adversarial guidance
    term is off: the pipeline sets its weight to 0, and its two methods here raise if called.

    Args:
        operator: the known degradation ``A``.
    """

    def __init__(self, operator: Operator) -> None:
        self.operator = operator

    def train_step(self, estimates: Tensor, degraded: Tensor, cap_perceptual: bool) -> Tensor:
        """Nothing to train: a zero loss."""
        return estimates.new_zeros(())

    def align(self, estimate: Tensor) -> Tensor:
        """``A(x)``, with the graph to ``estimate`` kept for the guidance gradient."""
        return self.operator(estimate)

    def train_residual_discriminator(self, estimate: Tensor, aligned: Tensor, degraded: Tensor) -> None:
        self._no_residual_discriminator()

    def residual_adversarial_term(self, estimate: Tensor, degraded: Tensor) -> Tensor:
        self._no_residual_discriminator()

    @staticmethod
    def _no_residual_discriminator() -> NoReturn:
        raise RuntimeError("known-operator mode has no residual discriminator D_g: the adversarial weight must be 0")
