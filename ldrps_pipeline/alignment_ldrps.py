"""The alignment module ``f`` (clean image -> degraded domain), its discriminators, and the per-image trainer.

``f`` is trained from scratch on the one image being restored, while sampling. The pipeline's
``aligner`` component only carries the architecture and optimiser settings: for every image,
:class:`AlignmentTrainer` builds a fresh, freshly initialised copy together with its optimiser and
both discriminators, and all of it is dropped with the image.

This module imports no sibling module, so the Hub export can ship it as the ``aligner`` component's
remote code.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

ALIGNER_VARIANTS = ("residual", "plain")


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def _conv_stack(channels: list[int], negative_slope: float, stride: int = 1) -> list[nn.Module]:
    """conv3x3 layers between consecutive ``channels``, each followed by a LeakyReLU."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in zip(channels[:-1], channels[1:], strict=True):
        layers += [_conv(in_channels, out_channels, 3, stride), nn.LeakyReLU(negative_slope)]
    return layers


def kaiming_reset_(module: nn.Module, generator: torch.Generator, negative_slope: float) -> None:
    """Kaiming-normal weights and zero biases for every convolution of ``module``, drawn from ``generator`` (on CPU)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            std = nn.init.calculate_gain("leaky_relu", negative_slope) / fan_in**0.5
            weight = torch.randn(layer.weight.shape, generator=generator) * std
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.zero_()


class AlignmentModule(ModelMixin, ConfigMixin):
    """The degradation model ``f``: maps a clean estimate in [0, 1] into the degraded domain.

    Two variants (ALGORITHM.md, "Alignment module"):

    - ``"residual"``: ``a = A(x)``, ``out = B(a) + k * a`` with A = conv3x3(3->64), LReLU, conv1x1(64->3);
      B = conv3x3(3->64), LReLU, conv3x3(64->128), LReLU, conv3x3(128->256), LReLU, conv1x1(256->3);
      ``k`` a learnable per-channel scale initialised to 1. Adam, lr 5e-4, weight decay 1e-5.
    - ``"plain"``: conv3x3 3->64->128->256 with LReLU between, conv1x1 256->3. Adam, lr 5e-4.

    Args:
        variant: ``"residual"`` (default) or ``"plain"``.
        hidden_channels: channel widths of the conv3x3 stack.
        negative_slope: LeakyReLU slope.
        learning_rate: Adam learning rate of the online training.
        weight_decay: Adam weight decay; ``None`` picks the variant's reference value (1e-5 residual, 0 plain).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        variant: Literal["residual", "plain"] = "residual",
        hidden_channels: tuple[int, ...] = (64, 128, 256),
        negative_slope: float = 0.2,
        learning_rate: float = 5e-4,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__()
        if variant not in ALIGNER_VARIANTS:
            raise ValueError(f"variant must be one of {ALIGNER_VARIANTS}, got {variant!r}")
        self.trainer_compile_options: dict | None = None
        hidden = list(hidden_channels)
        body = nn.Sequential(*_conv_stack([3, *hidden], negative_slope), _conv(hidden[-1], 3, 1))
        if variant == "residual":
            self.head = nn.Sequential(_conv(3, hidden[0], 3), nn.LeakyReLU(negative_slope), _conv(hidden[0], 3, 1))
            self.body = body
            self.residual_scale = nn.Parameter(torch.ones(1, 3, 1, 1))
        else:
            self.body = body

    def compile_trainer_networks(self, **compile_options) -> None:
        """Have every :class:`AlignmentTrainer` built from this template compile its fresh ``f`` and
        discriminators with ``torch.compile(**compile_options)`` (runtime state, not saved). Fresh
        networks of the same shapes reuse the compiled code: nothing recompiles per image."""
        self.trainer_compile_options = dict(compile_options)

    @property
    def optimizer_weight_decay(self) -> float:
        """The Adam weight decay of the online training (the variant's reference value unless configured)."""
        if self.config.weight_decay is not None:
            return self.config.weight_decay
        return 1e-5 if self.config.variant == "residual" else 0.0

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-normal weights, zero biases and a unit residual scale, drawn from a CPU ``generator``."""
        kaiming_reset_(self, generator, self.config.negative_slope)
        if self.config.variant == "residual":
            with torch.no_grad():
                self.residual_scale.fill_(1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map clean images (N, 3, H, W) into the degraded domain; the spatial size is kept."""
        if self.config.variant == "plain":
            return self.body(image)
        features = self.head(image)
        return self.body(features) + self.residual_scale * features


class PatchDiscriminator(nn.Module):
    """conv3x3 stride 2: 3->64->128->256 with LeakyReLU, conv1x1 256->1, sigmoid: a map of real-probabilities."""

    def __init__(self, hidden_channels: tuple[int, ...] = (64, 128, 256), negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.layers = nn.Sequential(
            *_conv_stack([3, *hidden_channels], negative_slope, stride=2), _conv(hidden_channels[-1], 1, 1)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities in (0, 1), shape (N, 1, ceil(H/8), ceil(W/8)), in float32 (the sigmoid too)."""
        return torch.sigmoid(self.layers(image).float())


def _bce(probabilities: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy against an all-real or all-fake target, in float32 and outside any autocast region.

    A NaN probability (from a non-finite estimate) is taken as 0.5: torch's BCE refuses NaN, with an error on the
    CPU and a device-side assert on CUDA, which would end the process before the pipeline's end-of-pass check
    (``guidance_ldrps.NonFiniteFlags``) can report the pass; the NaN still reaches the weights through the
    sigmoid's backward, and from them the guidance loss. Finite probabilities are unchanged."""
    with torch.autocast(probabilities.device.type, enabled=False):
        probabilities = torch.nan_to_num(probabilities.float(), nan=0.5)
        return F.binary_cross_entropy(probabilities, torch.full_like(probabilities, float(real)))


class AlignmentTrainer:
    """All mutable per-image state of LD-RPS, created fresh for every image and dropped with it.

    Holds a freshly initialised copy of ``f`` (from the ``aligner`` template's config), its Adam
    optimiser, the discriminator ``D_f`` that tells ``f(x)`` from ``y``, and, when the adversarial
    guidance term is used, the residual discriminator ``D_g``. Parameters, optimiser states, losses
    and the BCE are float32; the convolutions run in ``compute_dtype`` (autocast) when it is bfloat16.

    Args:
        template: the pipeline's ``aligner`` component (its config is used, not its weights).
        seed: seeds the initial weights of ``f`` and the discriminators.
        device: where the networks live.
        f_discriminator_lr: Adam learning rate of ``D_f``.
        g_discriminator_lr: Adam learning rate of ``D_g``; ``None`` builds no ``D_g``.
        loss_weights: ``(w_mse, w_pse, w_adv)`` of the training loss of ``f``.
        perceptual: the perceptual distance ``P``, or ``None`` (then the ``w_pse`` term is left out).
        perceptual_cap: when the gate is open and ``w_pse * P`` exceeds this, it is scaled by ``perceptual_cap_factor``.
        compute_dtype: ``torch.bfloat16`` runs the convolutions of ``f`` and the discriminators under
            bfloat16 autocast (the pipeline passes it when its VAE is bfloat16); anything else keeps them
            in float32 (float16 would need loss scaling, which this online training does not do).
    """

    def __init__(
        self,
        template: AlignmentModule,
        *,
        seed: int,
        device: torch.device,
        f_discriminator_lr: float,
        g_discriminator_lr: float | None,
        loss_weights: tuple[float, float, float],
        perceptual=None,
        perceptual_cap: float = 10.0,
        perceptual_cap_factor: float = 0.2,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device_type = torch.device(device).type
        self.compute_dtype = compute_dtype if compute_dtype == torch.bfloat16 else torch.float32
        generator = torch.Generator().manual_seed(seed)
        self.aligner = AlignmentModule.from_config(template.config)
        self.aligner.reset_parameters(generator)
        self.aligner.to(device).train()
        self.aligner_optimizer = torch.optim.Adam(
            self.aligner.parameters(),
            lr=template.config.learning_rate,
            weight_decay=self.aligner.optimizer_weight_decay,
        )
        slope = template.config.negative_slope
        self.f_discriminator = PatchDiscriminator(negative_slope=slope)
        kaiming_reset_(self.f_discriminator, generator, slope)
        self.f_discriminator.to(device)
        self.f_discriminator_optimizer = torch.optim.Adam(self.f_discriminator.parameters(), lr=f_discriminator_lr)
        self.g_discriminator = None
        if g_discriminator_lr is not None:
            self.g_discriminator = PatchDiscriminator(negative_slope=slope)
            kaiming_reset_(self.g_discriminator, generator, slope)
            self.g_discriminator.to(device)
            self.g_discriminator_optimizer = torch.optim.Adam(self.g_discriminator.parameters(), lr=g_discriminator_lr)
        if template.trainer_compile_options is not None:
            for network in (self.aligner, self.f_discriminator, self.g_discriminator):
                if network is not None:
                    network.compile(**template.trainer_compile_options)
        self.loss_weights = loss_weights
        self.perceptual = perceptual
        self.perceptual_cap = perceptual_cap
        self.perceptual_cap_factor = perceptual_cap_factor

    def autocast(self) -> torch.autocast:
        """The autocast region of the networks' forward passes: bfloat16 convolutions, or disabled (float32)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    def train_step(self, estimates: torch.Tensor, degraded: torch.Tensor, cap_perceptual: bool) -> torch.Tensor:
        """One Adam step of ``D_f`` then one of ``f`` (ALGORITHM.md, "Alignment module", steps 1-2).

        Args:
            estimates: decoded clean estimates of all samples of this image, (S, 3, H, W), detached.
            degraded: the input ``y``, (1, 3, H, W).
            cap_perceptual: whether the guidance gate is open (``t`` below it), which enables the cap.

        Returns:
            The training loss of ``f`` (detached).
        """
        with torch.enable_grad():
            with self.autocast():
                aligned = self.aligner(estimates).float()
                # 1. D_f: real = y, fake = f(x).
                d_loss = 0.5 * (
                    _bce(self.f_discriminator(degraded), True) + _bce(self.f_discriminator(aligned.detach()), False)
                )
            self.f_discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.f_discriminator_optimizer.step()
            # 2. f: close to identity in content, looking like the degraded input.
            w_mse, w_pse, w_adv = self.loss_weights
            with self.autocast():
                loss = w_mse * F.mse_loss(aligned, estimates)
                if w_pse > 0 and self.perceptual is not None:
                    perceptual_term = w_pse * self.perceptual(aligned, estimates)
                    if cap_perceptual:
                        # torch.where rather than a Python `if`: no device sync in the sampling loop.
                        perceptual_term = torch.where(
                            perceptual_term > self.perceptual_cap,
                            self.perceptual_cap_factor * perceptual_term,
                            perceptual_term,
                        )
                    loss = loss + perceptual_term
                if w_adv > 0:
                    loss = loss + w_adv * _bce(self.f_discriminator(aligned), True)
            self.aligner_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.aligner_optimizer.step()
        return loss.detach()

    def train_residual_discriminator(
        self, estimate: torch.Tensor, aligned: torch.Tensor, degraded: torch.Tensor
    ) -> None:
        """One Adam step of ``D_g``: real ``x - f(x)``, fake ``x - y`` (ALGORITHM.md, "Guidance", step 3).

        Args:
            estimate: ``x``, (1, 3, H, W).
            aligned: ``f(x)`` of the same estimate.
            degraded: ``y``, (1, 3, H, W).
        """
        g_discriminator = self._residual_discriminator()
        real = (estimate - aligned).detach()
        fake = (estimate - degraded).detach()
        with torch.enable_grad():
            with self.autocast():
                d_loss = 0.5 * (_bce(g_discriminator(real), True) + _bce(g_discriminator(fake), False))
            self.g_discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.g_discriminator_optimizer.step()

    def residual_adversarial_term(self, estimate: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """``G = BCE(D_g(x - y), real)``, with the graph to ``estimate`` kept so that the guidance gradient flows
        through it; ``D_g``'s own parameters get no gradient from it.

        Args:
            estimate: ``x``, (1, 3, H, W), with grad.
            degraded: ``y``, (1, 3, H, W).
        """
        g_discriminator = self._residual_discriminator()
        residual = estimate - degraded
        with self.autocast():
            probabilities = torch.func.functional_call(
                g_discriminator, {name: p.detach() for name, p in g_discriminator.named_parameters()}, (residual,)
            )
        return _bce(probabilities, True)

    def _residual_discriminator(self) -> PatchDiscriminator:
        if self.g_discriminator is None:
            raise RuntimeError("this trainer was built without the residual discriminator D_g")
        return self.g_discriminator

    def align(self, estimate: torch.Tensor) -> torch.Tensor:
        """``f(x)`` with a graph to ``estimate`` only: the parameters of ``f`` get no gradient from the guidance."""
        params = {name: p.detach() for name, p in self.aligner.named_parameters()}
        with self.autocast():
            return torch.func.functional_call(self.aligner, params, (estimate,)).float()
