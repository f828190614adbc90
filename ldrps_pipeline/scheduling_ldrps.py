"""The recurrent posterior schedule of LD-RPS: the pass plan, the guidance gates and weights, the presets.

:class:`RecurrentPosteriorScheduler` works beside a stock diffusers DDIM scheduler (the pipeline's
``scheduler`` component), which supplies the timesteps and the cumulative alphas. It owns every
number of ALGORITHM.md that is not a network's: pass 0 over the full schedule, then ``recurrences``
passes over the tail that starts at the img2img timestep of ``strength``; guidance only for
``t < guidance_start``; the exposure and colour terms only for ``t < exposure_color_start``; the
percentile x0 clip; the loss weights and learning rates; and the named per-task presets. "Guidance" here is
always the posterior guidance (classifier-free guidance is the pipeline's ``guidance_scale``).

This module imports no sibling module, so the Hub export can ship it as the
``posterior_scheduler`` component's remote code.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def percentile_clip(
    latents: torch.Tensor, quantile: float = 0.995, min_threshold: float = 1.0, max_threshold: float = 100.0
) -> torch.Tensor:
    """Dynamic percentile clip of predicted x0 latents, WITHOUT rescaling.

    Per sample, over all its channels and pixels: ``s = quantile(|x0|, q)`` clamped to
    ``[min_threshold, max_threshold]``, then ``x0 = clamp(x0, -s, s)``. Unlike diffusers'
    ``thresholding=True`` the result is not divided by ``s``.

    Args:
        latents: predicted x0 latents, shape (N, C, h, w).
        quantile: the percentile, in (0, 1].
        min_threshold: lower bound of ``s``.
        max_threshold: upper bound of ``s``.

    Returns:
        The clipped latents, same shape and dtype.
    """
    flat = latents.reshape(latents.shape[0], -1).abs().float()
    s = torch.quantile(flat, quantile, dim=1).clamp(min_threshold, max_threshold)
    s = s.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return torch.maximum(torch.minimum(latents, s), -s)


def as_ddim_scheduler(scheduler: SchedulerMixin | None) -> DDIMScheduler | None:
    """``scheduler`` itself when it is a DDIM scheduler, else a DDIM scheduler with its config (its noise
    schedule, spacing and prediction type): LD-RPS's update is DDIM's (eta = 0)."""
    if scheduler is None or isinstance(scheduler, DDIMScheduler):
        return scheduler
    return DDIMScheduler.from_config(scheduler.config)


# Stable Diffusion's noise schedule and DDIM settings (SD 1.x / 2.x), for building a ``DDIMScheduler``.
STABLE_DIFFUSION_DDIM_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

# Per-task settings of the reference code (ALGORITHM.md, "Per-task settings"). A preset overrides
# these fields of the scheduler's config; everything else keeps its value. "default" is the
# task-blind setting and overrides nothing.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "lowlight": {
        "recurrences": 2,
        "posterior_scale": 80000.0,
        "aligner_loss_weights": (0.02, 0.3, 0.8),
        "f_discriminator_lr_residual": 4e-5,
        "f_discriminator_lr_plain": 1e-3,
        "g_discriminator_lr": 4e-5,
        "perceptual_weight": 2e-3,
        "adversarial_weight": 5e-5,
        "exposure_weight": 1e-2,
        "color_weight": 1e-2,
        "exposure_color_start": 100,
        "exposure_patch_size": 32,
        "exposure_tolerance": 0.0,
        "exposure_input_tolerance": 0.0,
        "use_caption": True,
    },
    "dehaze": {
        # The reference's dehazing script runs no recurrence and saves nothing: one recurrence here.
        "recurrences": 1,
        "posterior_scale": 25000.0,
        "aligner_loss_weights": (0.2, 0.5, 0.2),
        "f_discriminator_lr_residual": 1e-4,
        "f_discriminator_lr_plain": 2e-5,
        "g_discriminator_lr": 2e-5,
        "perceptual_weight": 5e-3,
        "adversarial_weight": 0.0,
        "exposure_weight": 1e-2,
        "color_weight": 1e-3,
        "exposure_color_start": 150,
        "exposure_patch_size": 64,
        "exposure_tolerance": 0.0,
        "exposure_input_tolerance": 0.0,
        "use_caption": False,
    },
    # Speed, not a task: one sample (the second only trained f), 50 steps and one recurrence of 25
    # instead of 450 + 2 x 225; the task-blind weights stay. On an H200 (bf16, 512x512) 5.2-7.6 s per image
    # eager, 4.8 s with enable_torch_compile() (README, "Speed and memory").
    "fast": {
        "num_inference_steps": 50,
        "recurrences": 1,
        "num_samples": 1,
    },
    "denoise": {
        "recurrences": 1,
        "posterior_scale": 40000.0,
        "aligner_loss_weights": (3.0, 0.002, 0.001),
        "f_discriminator_lr_residual": 1e-4,
        "f_discriminator_lr_plain": 1e-4,
        "g_discriminator_lr": 1e-3,
        "perceptual_weight": 0.0,
        "adversarial_weight": 0.0,
        "exposure_weight": 0.0,
        "color_weight": 0.0,
        "use_caption": False,
    },
}

# The seeds the reference scripts used per task, for users who want to reproduce them.
REFERENCE_SEEDS = {"lowlight": 20, "dehaze": 10, "denoise": 20}


def is_integer_at_least(value: Any, minimum: int) -> bool:
    """An integer (Python or numpy, not a bool) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def is_finite_number(value: Any, minimum: float = 0.0, positive: bool = False) -> bool:
    """A finite real number (Python or numpy, not a bool) of at least ``minimum`` (above it if ``positive``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > minimum if positive else value >= minimum


def check_schedule_arguments(num_inference_steps: Any, recurrences: Any, strength: Any, preset: str | None) -> None:
    """Raise ``ValueError`` naming the problem for the pass-plan arguments of a call (``None``: the scheduler's)."""
    if num_inference_steps is not None and not is_integer_at_least(num_inference_steps, 1):
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if recurrences is not None and not is_integer_at_least(recurrences, 0):
        raise ValueError(f"recurrences must be a non-negative integer, got {recurrences!r}")
    if strength is not None and not (is_finite_number(strength, positive=True) and strength <= 1):
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")


def check_config(config: Any) -> None:
    """Raise a ``ValueError`` naming the first field of a :class:`RecurrentPosteriorScheduler` config that is
    out of range (a bad value would otherwise fail, or silently do nothing, deep inside a restoration)."""
    rules = {
        "num_inference_steps": ("an integer >= 1", lambda v: is_integer_at_least(v, 1)),
        "recurrences": ("an integer >= 0", lambda v: is_integer_at_least(v, 0)),
        "strength": ("in (0, 1]", lambda v: is_finite_number(v, positive=True) and v <= 1),
        "num_samples": ("an integer >= 1", lambda v: is_integer_at_least(v, 1)),
        "guidance_start": ("an integer >= 0", lambda v: is_integer_at_least(v, 0)),
        "reference_pixels": ("an integer >= 1", lambda v: is_integer_at_least(v, 1)),
        "exposure_color_start": ("an integer >= 0", lambda v: is_integer_at_least(v, 0)),
        "exposure_patch_size": ("an integer >= 1", lambda v: is_integer_at_least(v, 1)),
        "aligner_warmup_steps": ("an integer >= 0", lambda v: is_integer_at_least(v, 0)),
        "aligner_loss_weights": (
            "three finite numbers >= 0",
            lambda v: isinstance(v, list | tuple) and len(v) == 3 and all(is_finite_number(w) for w in v),
        ),
        "clip_quantile": ("in (0, 1]", lambda v: is_finite_number(v, positive=True) and v <= 1),
        "clip_min": ("a finite number > 0", lambda v: is_finite_number(v, positive=True)),
        "clip_max": (
            f"a finite number >= clip_min ({config.clip_min})",
            lambda v: is_finite_number(v, config.clip_min),
        ),
        "use_caption": ("True or False", lambda v: isinstance(v, bool)),
    }
    for name in (
        "posterior_scale",
        "mse_weight",
        "perceptual_weight",
        "adversarial_weight",
        "exposure_weight",
        "exposure_tolerance",
        "exposure_input_tolerance",
        "color_weight",
        "aligner_perceptual_cap",
        "aligner_perceptual_cap_factor",
    ):
        rules[name] = ("a finite number >= 0", is_finite_number)
    for name in ("f_discriminator_lr_residual", "f_discriminator_lr_plain", "g_discriminator_lr"):
        rules[name] = ("a finite number > 0", lambda v: is_finite_number(v, positive=True))
    for name, (requirement, valid) in rules.items():
        value = getattr(config, name)
        if not valid(value):
            raise ValueError(f"RecurrentPosteriorScheduler: {name} must be {requirement}, got {value!r}")


@dataclass(frozen=True)
class GuidanceWeights:
    """The weights of the guidance loss terms at one timestep (zero means: do not compute the term)."""

    mse: float
    perceptual: float
    adversarial: float
    exposure: float
    color: float


class RecurrentPosteriorScheduler(SchedulerMixin, ConfigMixin):
    """Pass plan, gates, weights and the clipped DDIM update of LD-RPS recurrent posterior sampling.

    The defaults are the task-blind setting (preset ``"default"``); :meth:`with_preset` gives the
    reference's per-task settings. All fields are config values, saved with ``save_pretrained``.

    Args:
        num_inference_steps: DDIM steps of pass 0 when the pipeline call gives none (paper: 450).
        recurrences: passes after pass 0, each re-noising the last result to the ``strength`` timestep.
        strength: the img2img strength of a recurrence, in (0, 1]: the tail ``int(steps * strength)``
            timesteps of the schedule are re-run.
        num_samples: latents sampled side by side per image; sample 0 is the result, the others
            only train the alignment module.
        guidance_start: guidance only for ``t < guidance_start``.
        posterior_scale: the guidance step size, defined at ``reference_pixels`` pixels; at another
            size it is multiplied by ``pixels / reference_pixels`` so that each pixel pulls the same.
        reference_pixels: the image area the scale is defined at (512 x 512, the reference's size).
        mse_weight: weight of ``MSE(f(x), y)`` in the guidance loss.
        perceptual_weight: ``c_pse``, weight of ``P(f(x), y)`` (needs the ``perceptual`` component).
        adversarial_weight: ``c_adv``, weight of the residual adversarial term ``G`` (0: no ``D_g`` at all).
        exposure_weight: weight of the exposure loss, for ``t < exposure_color_start``.
        color_weight: weight of the colour loss, for ``t < exposure_color_start``.
        exposure_color_start: the gate of the exposure and colour terms.
        exposure_patch_size: the pooling size of the exposure loss, in pixels.
        exposure_tolerance: the exposure loss's dead band: a patch whose mean is within this of the level (0.5)
            costs nothing (beyond the paper; 0, the reference's, pulls every patch to 0.5, a dark or bright clean
            photo too). The default's exposure term, weight 1.0 at every guided step (gate 700) on 512 px patches
            (the image's mean up to 512 x 512) with tolerance 0.2, pulls only an image darker than 0.3 or brighter
            than 0.7 on average; colour term off. Chosen on crops of training photos with the demo model (README,
            "Presets", the exposure round): low light +1.5 to +2.2 dB, the other degradations within 0.01 dB; the
            reference's late terms (1e-3 for t < 100, 32 px) changed nothing there.
        aligner_loss_weights: ``(w_mse, w_pse, w_adv)`` of the online training of ``f``. The default
            ``(3.0, 0.0, 0.01)`` was chosen on crops of training photos with the demo model
            (``examples/development/tune_default_preset.py``; README, "Presets"): a strong identity term and a
            weak adversarial one keep ``f`` from absorbing noise, blur, rain and colour loss, so the guidance
            pulls harder there; a perceptual term (0.1) lost on all nine degradations once the demo model had
            perceptual features.
        aligner_warmup_steps: the training steps ``f`` (and ``D_f``) have taken, at least, when the guidance first
            uses ``f``: at the first step below ``guidance_start``, the steps missing are taken there, on that
            step's estimates. The default, 100, is what the paper's 450-step schedule gives ``f`` above the gate
            (one step per denoising step), so it changes nothing there; a shorter schedule (100 steps: 30 above
            the gate; ``fast``: 15) would otherwise guide with an ``f`` still far from identity (after 30 steps
            from its random start, ``f(x)`` is 15-22 dB from ``x``; after 100, 24-27 dB). 0: no warm-up.
        aligner_perceptual_cap: while guidance is on, an ``f``-training perceptual term above this...
        aligner_perceptual_cap_factor: ...is multiplied by this.
        f_discriminator_lr_residual: Adam lr of ``D_f`` with the residual alignment module.
        f_discriminator_lr_plain: Adam lr of ``D_f`` with the plain alignment module.
        g_discriminator_lr: Adam lr of ``D_g``.
        clip_quantile: percentile of ``|x0|`` of the dynamic x0 clip.
        clip_min: lower bound of the clip threshold.
        clip_max: upper bound of the clip threshold.
        use_caption: whether the captioner writes the prompt when none is given (``False``: empty prompt).
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_inference_steps: int = 450,
        recurrences: int = 2,
        strength: float = 0.5,
        num_samples: int = 2,
        guidance_start: int = 700,
        posterior_scale: float = 40000.0,
        reference_pixels: int = 512 * 512,
        mse_weight: float = 1.0,
        perceptual_weight: float = 2e-3,
        adversarial_weight: float = 0.0,
        exposure_weight: float = 1.0,
        color_weight: float = 0.0,
        exposure_color_start: int = 700,
        exposure_patch_size: int = 512,
        exposure_tolerance: float = 0.2,
        exposure_input_tolerance: float = 0.0,
        aligner_loss_weights: tuple[float, float, float] = (3.0, 0.0, 0.01),
        aligner_warmup_steps: int = 100,
        aligner_perceptual_cap: float = 10.0,
        aligner_perceptual_cap_factor: float = 0.2,
        f_discriminator_lr_residual: float = 1e-4,
        f_discriminator_lr_plain: float = 1e-4,
        g_discriminator_lr: float = 1e-4,
        clip_quantile: float = 0.995,
        clip_min: float = 1.0,
        clip_max: float = 100.0,
        use_caption: bool = True,
    ) -> None:
        check_config(self.config)
        self.init_noise_sigma = 1.0
        self.passes: list[list[int]] = []

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RecurrentPosteriorScheduler":
        """A scheduler with a named preset's settings (see ``PRESETS``) and optional further overrides."""
        return cls().with_preset(name, **overrides)

    def with_preset(self, name: str, **overrides: Any) -> "RecurrentPosteriorScheduler":
        """A new scheduler: this one's config with preset ``name`` applied, then ``overrides``; ``self`` is unchanged."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = sorted(key for key in self.config if not key.startswith("_"))
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"unknown RecurrentPosteriorScheduler fields {unknown}; the fields are {fields}")
        return type(self).from_config(self.config, **{**PRESETS[name], **overrides})

    def set_timesteps(
        self,
        num_inference_steps: int,
        scheduler: SchedulerMixin,
        recurrences: int | None = None,
        strength: float | None = None,
    ) -> list[list[int]]:
        """Plan the passes: pass 0 over the full schedule, then each recurrence over its tail.

        Calls ``scheduler.set_timesteps(num_inference_steps)`` on the stock DDIM scheduler. With 450
        steps and strength 0.5 (SD 2.1-base's leading spacing) pass 0 is 899, 897, ..., 1 and each
        recurrence starts at 449 and runs 225 steps.

        Returns:
            The timesteps of every pass, as Python ints (also kept in ``self.passes``).
        """
        recurrences = self.config.recurrences if recurrences is None else recurrences
        strength = self.config.strength if strength is None else strength
        scheduler.set_timesteps(num_inference_steps)
        full = [int(t) for t in scheduler.timesteps]
        tail_length = min(int(num_inference_steps * strength), num_inference_steps)
        if recurrences > 0 and tail_length < 1:
            raise ValueError(
                f"strength={strength} with num_inference_steps={num_inference_steps} leaves no step to re-run"
            )
        self.passes = [full] + [full[len(full) - tail_length :] for _ in range(recurrences)]
        return self.passes

    def plan_passes(
        self,
        num_inference_steps: int | None,
        scheduler: SchedulerMixin,
        recurrences: int | None = None,
        strength: float | None = None,
    ) -> tuple[list[list[int]], list[list[GuidanceWeights | None]]]:
        """A call's plan, made once: the timesteps of every pass (:meth:`set_timesteps`; ``num_inference_steps``
        ``None`` takes the config's) and the guidance of each of their steps (:meth:`guidance_plan`)."""
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps
        passes = self.set_timesteps(int(num_inference_steps), scheduler, recurrences, strength)
        return passes, [self.guidance_plan(timesteps) for timesteps in passes]

    @property
    def guides(self) -> bool:
        """Whether the posterior guidance acts at all (a non-zero ``posterior_scale``); without it the
        alignment state is never used, so the pipeline does not train it."""
        return self.config.posterior_scale != 0

    def guidance_enabled(self, timestep: int) -> bool:
        """Whether the posterior guidance acts at ``timestep``: ``t < guidance_start`` and a non-zero scale."""
        return timestep < self.config.guidance_start and self.guides

    def guidance_weights(self, timestep: int) -> GuidanceWeights:
        """The loss weights at ``timestep``; the exposure and colour weights are zero above their gate."""
        late = timestep < self.config.exposure_color_start
        return GuidanceWeights(
            mse=self.config.mse_weight,
            perceptual=self.config.perceptual_weight,
            adversarial=self.config.adversarial_weight,
            exposure=self.config.exposure_weight if late else 0.0,
            color=self.config.color_weight if late else 0.0,
        )

    def guidance_plan(self, timesteps: list[int]) -> list[GuidanceWeights | None]:
        """The guidance of every step of a pass, planned once per pass: the loss weights at each timestep below
        the guidance gate (:meth:`guidance_weights`), ``None`` at the others (:meth:`guidance_enabled`)."""
        return [self.guidance_weights(t) if self.guidance_enabled(t) else None for t in timesteps]

    def scale_for(self, height: int, width: int) -> float:
        """The guidance step size for an image of ``height x width`` pixels."""
        return self.config.posterior_scale * height * width / self.config.reference_pixels

    def f_discriminator_lr(self, variant: str) -> float:
        """Adam lr of ``D_f`` for an alignment module of ``variant`` (``"residual"`` or ``"plain"``)."""
        return self.config.f_discriminator_lr_plain if variant == "plain" else self.config.f_discriminator_lr_residual

    def clip(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        """The configured dynamic percentile clip of x0 latents (see :func:`percentile_clip`)."""
        return percentile_clip(
            pred_original_sample, self.config.clip_quantile, self.config.clip_min, self.config.clip_max
        )

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, scheduler: SchedulerMixin
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step (eta = 0) whose predicted x0 is percentile-clipped first.

        Adapted from diffusers' ``DDIMScheduler.step`` (Apache-2.0), with the percentile clip in
        place of its thresholding. The predicted x0 comes from ``z_t`` (the standard choice; the
        reference computes it from the already-stepped ``z_{t-1}``).

        Returns:
            ``(prev_sample, pred_original_sample)``, the latter clipped.
        """
        prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha_prod_t = scheduler.alphas_cumprod[timestep].item()
        alpha_prod_t_prev = (
            scheduler.alphas_cumprod[prev_timestep].item()
            if prev_timestep >= 0
            else float(scheduler.final_alpha_cumprod)
        )
        beta_prod_t = 1 - alpha_prod_t
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        elif prediction_type == "v_prediction":
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        pred_original_sample = self.clip(pred_original_sample)
        prev_sample = alpha_prod_t_prev**0.5 * pred_original_sample + (1 - alpha_prod_t_prev) ** 0.5 * pred_epsilon
        return prev_sample, pred_original_sample

    def renoise(
        self, latents: torch.Tensor, noise: torch.Tensor, timestep: int, scheduler: SchedulerMixin
    ) -> torch.Tensor:
        """``sqrt(a_t) z + sqrt(1 - a_t) n``: the start of a recurrence from the previous pass's result."""
        return scheduler.add_noise(latents, noise, torch.tensor([timestep]))
