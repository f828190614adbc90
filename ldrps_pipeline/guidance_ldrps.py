"""The posterior guidance of LD-RPS, in the order of ALGORITHM.md ("Alignment module", steps 1-2, and
"Guidance (posterior) term", steps 1-5): the loss terms, their sum :func:`posterior_loss`, and
:class:`PosteriorGuidance`, the pipeline's step that trains the alignment states and shifts sample 0; and
:class:`NonFiniteFlags`, the device-side record of non-finite latents, losses and gradients that the pipeline
reads once per pass (:class:`NonFiniteSampleError`).

Each term is a small function; the weights and the timestep gates that switch them on come from
:class:`RecurrentPosteriorScheduler` (planned once per pass), the alignment module ``f`` and the
discriminators from each image's :class:`AlignmentTrainer` (in known-operator mode, a fixed ``A`` in place of
``f`` and nothing trained: ``KnownOperatorAlignment`` of ``operators_ldrps``). Everything here runs in float32: decoded
images are cast to float32 before the loss.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file: the
scheduler's weights and the trainers come in as the protocols below.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch.profiler import record_function

GUIDANCE_PROFILER_RANGES = {
    "alignment_training": "ldrps.alignment_training",
    "guidance_loss": "ldrps.guidance_loss",
    "guidance_backward": "ldrps.guidance_backward",
}
"""The ``torch.profiler.record_function`` ranges of :meth:`PosteriorGuidance.posterior_guidance` (part of the
pipeline's ``PROFILER_RANGES``): the training of the alignment states, the guidance loss, its backward."""


class LossWeights(Protocol):
    """The weights of the posterior loss terms at one step (``GuidanceWeights``); a zero weight skips its term."""

    mse: float
    perceptual: float
    adversarial: float
    exposure: float
    color: float


class ImageAlignment(Protocol):
    """What the posterior guidance uses of one image's alignment state (``AlignmentTrainer``, or
    ``KnownOperatorAlignment`` with a known operator)."""

    def train_step(self, estimates: torch.Tensor, degraded: torch.Tensor, cap_perceptual: bool) -> torch.Tensor: ...

    def align(self, estimate: torch.Tensor) -> torch.Tensor: ...

    def train_residual_discriminator(
        self, estimate: torch.Tensor, aligned: torch.Tensor, degraded: torch.Tensor
    ) -> None: ...

    def residual_adversarial_term(self, estimate: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor: ...


PerceptualDistanceToFeatures = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(a, features of b) -> P(a, b)`` (``PerceptualFeatures.distance_to_features``)."""


def exposure_loss(
    image: torch.Tensor, patch_size: int = 32, level: float = 0.5, tolerance: float = 0.0
) -> torch.Tensor:
    """Exposure control loss: mean over average-pooled patches of the channel-mean image of
    ``max(|patch - level| - tolerance, 0)^2`` (``tolerance`` 0: the paper's ``(patch - level)^2``; above it, patches
    within ``level ± tolerance`` cost nothing, so a well-exposed dark or bright image is not pulled to ``level``).

    Images smaller than ``patch_size`` use one patch per side as large as the image allows. When a side
    is not a multiple of ``patch_size``, its last, narrower patches are kept (each the mean of its own
    pixels), so that every pixel takes part: inputs are restored at their own size, not only at 512.
    """
    gray = image.mean(dim=1, keepdim=True)
    kernel = (min(patch_size, gray.shape[-2]), min(patch_size, gray.shape[-1]))
    patches = F.avg_pool2d(gray, kernel, ceil_mode=True)
    return ((patches - level).abs() - tolerance).clamp(min=0).square().mean()


def exposure_input_gate(degraded: torch.Tensor, tolerance: float = 0.0, level: float = 0.5) -> torch.Tensor:
    """1.0 where the input's mean is at least ``tolerance`` from ``level``, else 0.0: whether the exposure loss runs
    for this input (``tolerance`` 0: always, the paper's; above it, only for an input darker than ``level -
    tolerance`` or brighter than ``level + tolerance``, so that the input's own exposure, not the estimate's, decides
    whether an image is taken as badly exposed). A device tensor of the batch's shape (B,): nothing is read back.
    """
    return ((degraded.mean(dim=(1, 2, 3)) - level).abs() >= tolerance).to(degraded.dtype)


def color_loss(image: torch.Tensor) -> torch.Tensor:
    """Colour constancy loss ``sqrt((mr-mg)^4 + (mr-mb)^4 + (mg-mb)^4)`` on per-channel spatial means (mean over the batch)."""
    mean_r, mean_g, mean_b = image.mean(dim=(-2, -1)).unbind(dim=1)
    value = (mean_r - mean_g) ** 4 + (mean_r - mean_b) ** 4 + (mean_g - mean_b) ** 4
    # The tiny epsilon keeps the gradient of sqrt finite when the three means are equal.
    return torch.sqrt(value + 1e-12).mean()


def posterior_loss(
    estimates: torch.Tensor,
    degraded: torch.Tensor,
    alignments: Sequence[ImageAlignment],
    weights: LossWeights,
    *,
    exposure_patch_size: int,
    exposure_tolerance: float = 0.0,
    exposure_input_tolerance: float = 0.0,
    perceptual_distance: PerceptualDistanceToFeatures | None = None,
    degraded_features: torch.Tensor | None = None,
    reduction: Literal["sum", "none"] = "sum",
) -> torch.Tensor:
    """The guidance loss ``L`` at one step below the guidance gate, summed over the images (ALGORITHM.md,
    "Guidance", steps 1, 3 and 4):

    ``L = w_mse MSE(f(x), y) + c_pse P(f(x), y) + c_adv G + w_exp L_exp(x) + w_col L_col(x)``, with ``D_g``
    taking its Adam step before ``G``; a term whose weight is zero is not computed (nor is ``D_g`` trained).

    Args:
        estimates: ``x``, the decoded clean estimate (the guided sample) of every image, (B, 3, H, W), with
            a graph to the x0 latent.
        degraded: ``y``, the inputs, (B, 3, H, W).
        alignments: each image's ``f`` and ``D_g``.
        weights: the weights at this step.
        exposure_patch_size: the pooling size of the exposure loss, in pixels.
        exposure_tolerance: the exposure loss's dead band around its level (:func:`exposure_loss`).
        exposure_input_tolerance: the exposure loss runs only for an image whose input's mean is at least this
            from the level (:func:`exposure_input_gate`; 0: every image).
        perceptual_distance: ``P`` against precomputed features; ``None`` leaves the perceptual term out.
        degraded_features: the features of ``y`` for ``perceptual_distance``, (B, ...).
        reduction: ``"sum"``, the loss of the batch (a scalar), or ``"none"``, each image's, (B,), as torch's
            losses take it; the gradient of their sum to each image's estimate is that image's alone.
    """
    losses = []
    exposure_gates = exposure_input_gate(degraded, exposure_input_tolerance) if weights.exposure > 0 else None
    for index, (alignment, x, y) in enumerate(zip(alignments, estimates.split(1), degraded.split(1), strict=True)):
        aligned = alignment.align(x)  # 1. y_hat = f(x)
        image_loss = weights.mse * F.mse_loss(aligned, y)  # 3. MSE(y_hat, y) ...
        if weights.perceptual > 0 and perceptual_distance is not None:
            image_loss = image_loss + weights.perceptual * perceptual_distance(
                aligned, degraded_features[index : index + 1]
            )
        if weights.adversarial > 0:
            alignment.train_residual_discriminator(x, aligned, y)
            image_loss = image_loss + weights.adversarial * alignment.residual_adversarial_term(x, y)
        if weights.exposure > 0:  # 4. the exposure and colour terms (zero weights above their gate)
            image_loss = image_loss + weights.exposure * exposure_gates[index] * exposure_loss(
                x, exposure_patch_size, tolerance=exposure_tolerance
            )
        if weights.color > 0:
            image_loss = image_loss + weights.color * color_loss(x)
        losses.append(image_loss)
    return torch.stack(losses) if reduction == "none" else sum(losses)


NON_FINITE_QUANTITIES = ("latents", "loss", "gradient")
"""What :class:`NonFiniteFlags` watches: the latents of every sample after each step, each image's guidance loss,
and the gradient that shifts its sample 0."""


class NonFiniteSampleError(ValueError):
    """A pass of the sampling made non-finite values (NaN or infinity) in the latents, a guidance loss or its
    gradient; raised at the end of that pass, so nothing non-finite is returned and no later pass runs.

    A ``ValueError``, as the pipeline raises for what it cannot do with the values it was given: with these
    settings (often half precision, or a posterior scale too large for the image) the sampling diverged. A
    caller may catch it and try again, e.g. in float32 or with a smaller ``posterior_scale``.

    Attributes:
        pass_index: the pass (0 is the first, 1 the first recurrence, ...).
        num_passes: the call's number of passes.
        faults: for every image index (in the call's batch) that went non-finite, what did, among
            :data:`NON_FINITE_QUANTITIES`.
    """

    def __init__(self, pass_index: int, num_passes: int, faults: dict[int, tuple[str, ...]]) -> None:
        super().__init__(pass_index, num_passes, faults)
        self.pass_index = pass_index
        self.num_passes = num_passes
        self.faults = faults

    @property
    def image_indices(self) -> list[int]:
        """The images of the batch that went non-finite, in order."""
        return sorted(self.faults)

    def __str__(self) -> str:
        images = "; ".join(f"image {index}: {', '.join(self.faults[index])}" for index in self.image_indices)
        which = "the first pass" if self.pass_index == 0 else f"recurrence {self.pass_index} of {self.num_passes - 1}"
        return (
            f"non-finite values in pass {self.pass_index} ({which}; {images}); try float32 weights or a smaller "
            "posterior_scale"
        )


class NonFiniteFlags:
    """Which images of a call went non-finite, and in what, as a device tensor: each :meth:`record` ORs into it
    without reading it (no device sync in the sampling loop), and :meth:`check` reads it once, at the end of
    a pass.

    Args:
        batch_size: B, the images of the call.
        device: where the flags live (the latents' device).
    """

    def __init__(self, batch_size: int, device: torch.device | str) -> None:
        self.batch_size = batch_size
        self.flags = torch.zeros(len(NON_FINITE_QUANTITIES), batch_size, dtype=torch.bool, device=device)

    def record(self, quantity: str, values: torch.Tensor) -> None:
        """Flag every image whose ``values`` hold a NaN or an infinity; ``values`` has the images' rows first, in
        order: (B, ...), or (B * S, ...) for the samples of every image."""
        finite = torch.isfinite(values.detach()).reshape(self.batch_size, -1).all(dim=1)
        self.flags[NON_FINITE_QUANTITIES.index(quantity)] |= ~finite

    def check(self, pass_index: int, num_passes: int) -> None:
        """Read the flags (one device sync) and raise :class:`NonFiniteSampleError` if any is set.

        Raises:
            NonFiniteSampleError: naming the pass, the images and what went non-finite in each.
        """
        rows = self.flags.tolist()
        faults = {}
        for image in range(self.batch_size):
            names = tuple(name for name, row in zip(NON_FINITE_QUANTITIES, rows, strict=True) if row[image])
            if names:
                faults[image] = names
        if faults:
            raise NonFiniteSampleError(pass_index, num_passes, faults)


def float16_backward_scale(height: int, width: int, scale: float) -> float:
    """The :attr:`PosteriorState.backward_scale` of a float16 decoder: ``H * W / scale``, so that the loss is
    multiplied by the pixel count in all for the backward.

    The MSE of an ``H x W`` image gives each pixel a gradient of ``2 (y_hat - y) / (3 H W)``: at 512 x 512 and a
    mismatch of 1e-3, about 3e-9, below float16's smallest subnormal (6e-8), so the backward through a float16
    decoder would return zero. Multiplied by ``H W``, the gradients entering the decoder are of the order of the
    mismatch itself, well inside float16's range (they grow by the decoder's upsampling factor squared, 64 for
    SD, on their way to the latent), and the float32 division afterwards gives back ``grad(-scale * L)``.
    """
    return height * width / scale if scale > 0 else 1.0


@dataclass
class PosteriorState:
    """What the posterior guidance works with during one call: built once per call, before the sampling,
    and dropped with the call.

    Args:
        trainers: each image's fresh alignment state (``f``, ``D_f``, ``D_g`` and their optimisers).
        degraded: ``y``, (B, 3, H, W).
        num_samples: S, the latents per image (sample 0 is the result).
        scale: the guidance step size at this image size (``RecurrentPosteriorScheduler.scale_for``).
        exposure_patch_size: the pooling size of the exposure loss.
        perceptual_distance: ``P`` against precomputed features, or ``None`` without a ``perceptual`` component.
        degraded_features: the perceptual features of ``y`` (computed once), or ``None``.
        exposure_tolerance: the exposure loss's dead band around its level.
        exposure_input_tolerance: the exposure loss runs only for an image whose input's mean is at least this
            from its level (:func:`exposure_input_gate`).
        learns_alignment: whether the alignment states learn while sampling; ``False`` with a known operator in
            place of ``f`` (``operators_ldrps``): nothing is trained, so nothing is decoded above the guidance
            gate, and below it sample 0 alone.
        non_finite: the call's :class:`NonFiniteFlags`, into which :meth:`loss` and :meth:`shift_sample_zero`
            record each image's loss and gradient; ``None`` records nothing.
        backward_scale: the factor the guidance loss is multiplied by for its backward, the gradient being divided
            by it again in float32 (loss scaling, as mixed-precision training does): 1 except with a float16
            decoder (:func:`float16_backward_scale`).
        aligner_warmup_steps: the training steps the alignment states have taken, at least, when the guidance
            first uses them (``RecurrentPosteriorScheduler``'s field of that name); the first guided step takes the
            steps missing.
        alignment_steps: the training steps the alignment states have taken so far in this call.
    """

    trainers: Sequence[ImageAlignment]
    degraded: torch.Tensor
    num_samples: int
    scale: float
    exposure_patch_size: int
    perceptual_distance: PerceptualDistanceToFeatures | None
    degraded_features: torch.Tensor | None
    exposure_tolerance: float = 0.0
    exposure_input_tolerance: float = 0.0
    learns_alignment: bool = True
    non_finite: NonFiniteFlags | None = None
    backward_scale: float = 1.0
    aligner_warmup_steps: int = 0
    alignment_steps: int = 0

    def train_alignment(self, estimates: torch.Tensor, cap_perceptual: bool) -> None:
        """ALGORITHM.md, "Alignment module", steps 1-2, for every image: one Adam step of ``D_f``, then one of ``f``, on the
        estimates of all its samples (``estimates``: (B, S, 3, H, W), detached); ``cap_perceptual`` below the
        guidance gate, where the first step also takes the warm-up steps still missing
        (:attr:`aligner_warmup_steps`) on the same estimates."""
        steps = max(1, self.aligner_warmup_steps - self.alignment_steps) if cap_perceptual else 1
        for _ in range(steps):
            for trainer, image_estimates, y in zip(self.trainers, estimates, self.degraded.split(1), strict=True):
                trainer.train_step(image_estimates, y, cap_perceptual=cap_perceptual)
        self.alignment_steps += steps

    def loss(
        self, estimates: torch.Tensor, weights: LossWeights, degraded_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:func:`posterior_loss` of ``estimates`` (sample 0 of every image), with this state's ``y``, ``f``, ``D_g``
        and perceptual features (or ``degraded_features`` given in their place); each image's loss is recorded in
        :attr:`non_finite`."""
        losses = posterior_loss(
            estimates,
            self.degraded,
            self.trainers,
            weights,
            exposure_patch_size=self.exposure_patch_size,
            exposure_tolerance=self.exposure_tolerance,
            exposure_input_tolerance=self.exposure_input_tolerance,
            perceptual_distance=self.perceptual_distance,
            degraded_features=self.degraded_features if degraded_features is None else degraded_features,
            reduction="none",
        )
        if self.non_finite is not None:
            self.non_finite.record("loss", losses)
        return losses.sum()

    def shift_sample_zero(self, latents: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``latents`` (B * S, C, h, w) with ``shift`` (B, C, h, w) added to sample 0 of every image; the shift (the
        guidance gradient) is recorded in :attr:`non_finite`."""
        if self.non_finite is not None:
            self.non_finite.record("gradient", shift)
        latents = latents.unflatten(0, (self.degraded.shape[0], self.num_samples))
        latents[:, 0] += shift
        return latents.flatten(0, 1)


class PosteriorGuidance:
    """The posterior guidance step of :class:`LDRPSPipeline` (a mixin of the pipeline, which supplies ``decode``:
    ``x0(z) = (D(z / s) + 1) / 2``, cropped to the input's size)."""

    def posterior_guidance(
        self,
        latents: torch.Tensor,
        pred_original_sample: torch.Tensor,
        weights: LossWeights | None,
        state: PosteriorState,
    ) -> torch.Tensor:
        """One step's posterior guidance, after its DDIM update: the alignment states trained on every sample's
        clean estimate, and below the guidance gate sample 0 of every image moved along the gradient of the
        guidance loss (ALGORITHM.md, "Alignment module" steps 1-2 and "Guidance (posterior) term" steps 1-5).

        An intended extension point: a pipeline subclass may override it to change what the posterior guidance
        of a step does or costs, and nothing else (the speed benchmark's ``ReferenceCostPipeline`` decodes and
        backpropagates every sample at every step, as the reference code does). An override should keep the
        profiler ranges of :data:`GUIDANCE_PROFILER_RANGES` around the same phases.

        Args:
            latents: ``z_{t-1}`` of all samples, (B * S, C, h, w), from the DDIM update.
            pred_original_sample: their clipped x0 latents ``z0_hat``, (B * S, C, h, w).
            weights: the guidance loss weights at this step, or ``None`` at or above the guidance gate
                (``RecurrentPosteriorScheduler.guidance_plan``).
            state: the call's :class:`PosteriorState`.

        Returns:
            ``z_{t-1}``, with ``g = grad(-scale * L, z0_hat)`` added to sample 0 of every image below the gate.
        """
        guided = weights is not None
        if not (guided or state.learns_alignment):
            return latents  # a known operator above the guidance gate: nothing to train, nothing to guide
        # Guidance 1: x = x0(z0_hat) of every sample, with a graph to z0_hat only for sample 0 and when guided.
        z0, estimate, estimates = self._decode_estimates(pred_original_sample, state, graph=guided)
        # Alignment module 1-2: D_f, then f, take one Adam step on the (detached) estimates of all samples.
        if state.learns_alignment:
            with record_function(GUIDANCE_PROFILER_RANGES["alignment_training"]):
                state.train_alignment(estimates, cap_perceptual=guided)
        # Guidance 2: no guidance for t >= guidance_start.
        if not guided:
            return latents
        with torch.enable_grad():
            # Guidance 3-4: L of sample 0 of every image (posterior_loss: y_hat = f(x), the terms, D_g's step).
            with record_function(GUIDANCE_PROFILER_RANGES["guidance_loss"]):
                loss = state.loss(estimate, weights)
            # Guidance 5: g = grad(-scale * L, z0_hat); z_{t-1} <- z_{t-1} + g for sample 0.
            with record_function(GUIDANCE_PROFILER_RANGES["guidance_backward"]):
                (gradient,) = torch.autograd.grad(-state.scale * state.backward_scale * loss, z0)
                if state.backward_scale != 1:
                    gradient = gradient / state.backward_scale  # float32: z0 is a float32 leaf
        return state.shift_sample_zero(latents, gradient)

    def _decode_estimates(
        self, pred_original_sample: torch.Tensor, state: PosteriorState, graph: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """The clean estimates ``x0(z0_hat)`` of every sample, one decode per sample index over all images (every
        decode of a restoration then has one shape: a compiled decoder builds one graph per grad mode only).

        Returns:
            ``(z0, estimate, estimates)``: with ``graph``, the x0 latent of sample 0 as a leaf that requires grad
            and its decode with a graph to it (else ``None, None``); and the detached estimates of all
            samples, (B, S, 3, H, W) (of sample 0 alone, (B, 1, 3, H, W), when the alignment states do not learn).
        """
        batch_size, _, height, width = state.degraded.shape
        latents = pred_original_sample.unflatten(0, (batch_size, state.num_samples))
        z0 = estimate = None
        if graph:
            z0 = latents[:, 0].detach().contiguous().requires_grad_(True)
            with torch.enable_grad():
                estimate = self.decode(z0, height, width)
            decoded = [estimate.detach()]
        else:
            decoded = [self.decode(latents[:, 0], height, width)]
        others = range(1, state.num_samples) if state.learns_alignment else ()  # they only train f
        decoded += [self.decode(latents[:, sample], height, width) for sample in others]
        return z0, estimate, torch.stack(decoded, dim=1)
