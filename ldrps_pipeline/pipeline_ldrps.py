# Copyright 2026 The ldrps-pipeline authors. Licensed under the Apache License, Version 2.0.
# The properties and the callback arguments are adapted from diffusers'
# StableDiffusionPipeline (Copyright The HuggingFace Team, Apache License 2.0).
"""LD-RPS: zero-shot unified image restoration by latent-diffusion recurrent posterior sampling.

``LDRPSPipeline.__call__`` follows ALGORITHM.md step by step: each numbered comment there names the
section of ALGORITHM.md that its step implements. What a denoising step does beyond the UNet and DDIM (the
training of the alignment states and the posterior guidance: gate, loss terms, gradient, shift of sample 0)
is :meth:`~guidance_ldrps.PosteriorGuidance.posterior_guidance`, read in order in ``guidance_ldrps.py``;
the prompts of steps 1 and 2 come from ``captioning_ldrps.PromptCaptioning`` and ``conditioning_ldrps.PromptEncoding``;
the speed and memory options (``enable_torch_compile``, out-of-memory advice) come from ``options_ldrps.py``;
xformers is diffusers' opt-in ``enable_xformers_memory_efficient_attention()``. "Guidance"
alone means the posterior guidance; classifier-free guidance is "CFG" (its scale is diffusers'
``guidance_scale``).

Every sibling module this file needs is imported here directly (and none of them imports another),
so that diffusers' remote-code loader, which copies only a pipeline file's direct relative imports,
finds them all when this file is used as ``custom_pipeline`` or from a Hub export.
"""

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from torch.profiler import record_function
from transformers import CLIPTextModel, CLIPTokenizer

from .alignment_ldrps import AlignmentModule, AlignmentTrainer
from .attention_ldrps import DecoderAttnProcessor, use_vae_attention
from .captioning_ldrps import CAPTION_MAX_NEW_TOKENS, PromptCaptioning, check_instruction
from .conditioning_ldrps import (
    PromptEncoding,
    StepEndCallback,
    TextConditioning,
    check_callback_tensor_inputs,
    classifier_free_prediction,
    run_step_end_callback,
)
from .guidance_ldrps import (
    GUIDANCE_PROFILER_RANGES,
    NonFiniteFlags,
    PosteriorGuidance,
    PosteriorState,
    float16_backward_scale,
)
from .inputs_ldrps import PipelineImageInput, per_image_inputs
from .operators_ldrps import KnownOperatorAlignment, Operator, check_operator_output, resolve_operator
from .options_ldrps import SpeedAndMemoryOptions
from .perceptual_ldrps import HOW_TO_GET_PERCEPTUAL_FEATURES, PerceptualFeatures
from .scheduling_ldrps import (
    RecurrentPosteriorScheduler,
    as_ddim_scheduler,
    check_schedule_arguments,
    is_finite_number,
    is_integer_at_least,
)

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

PROFILER_RANGES = {"step": "ldrps.step", "unet": "ldrps.unet", "decode": "ldrps.decode", **GUIDANCE_PROFILER_RANGES}
"""The ``torch.profiler.record_function`` ranges a restoration marks, by phase: each denoising step, its UNet
call(s) (both samples and both CFG branches), each decode of the clean estimates (and the final one), the
training step of the per-image alignment states, the posterior guidance loss and its backward to the x0
latent. A profiler (``torch.profiler.profile``) reports each range's host and device time; without one
they cost a few microseconds per step."""


@dataclass
class LDRPSPipelineOutput(BaseOutput):
    """Output of :class:`LDRPSPipeline`.

    Args:
        images: the restored images, at the inputs' own sizes: a list of PIL images, a numpy array
            (B, H, W, 3), a torch tensor (B, 3, H, W) in [0, 1], or the final latents of sample 0.
        prompts: the prompt actually used for each image (the caption, the given prompt, or "").
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    prompts: list[str]


class LDRPSPipeline(PromptCaptioning, PromptEncoding, PosteriorGuidance, SpeedAndMemoryOptions, DiffusionPipeline):
    """Zero-shot unified image restoration with a text-to-image latent diffusion prior (LD-RPS).

    A captioner describes what the clean image should show; DDIM sampling from noise is steered
    by the mismatch between the degraded input and an alignment network ``f`` applied to the
    clean estimate, with ``f`` trained online on the one image; the sampling is then re-run from
    its own re-noised result. The output has the input's own size and aspect ratio.

    Args:
        vae: the latent autoencoder.
        text_encoder: the CLIP text encoder of the prior.
        tokenizer: its tokenizer.
        unet: the noise (or v) prediction network with cross-attention.
        scheduler: a DDIM scheduler (another diffusers scheduler is converted to DDIM with its config).
        aligner: the alignment module template (architecture and optimiser settings; the weights are
            re-initialised for every image); ``None``: the paper's residual module, ``AlignmentModule()``.
        posterior_scheduler: the recurrent posterior schedule, gates, weights and presets; ``None``: the
            paper's settings, ``RecurrentPosteriorScheduler()``. With both defaults, a plain Stable Diffusion
            repository loads as LD-RPS: ``DiffusionPipeline.from_pretrained(sd_repo, custom_pipeline=...,
            trust_remote_code=True)``.
        captioner: optional transformers image-text-to-text model that writes the prompt.
        captioner_processor: its processor.
        perceptual: optional VGG16 ``features[:9]`` extractor for the perceptual terms.
        caption_instruction: what the captioner is asked, in its family's convention
            (``captioning_ldrps.caption_prompt``); ``None``: the paper's instruction (or the family's default
            task for Florence-2, PaliGemma and BLIP). Saved in the pipeline's config.
        caption_max_new_tokens: the most tokens a caption may have (40 by default; the instruction asks for
            at most 20 words). Saved in the pipeline's config.
    """

    vae_attention_processor: type[AttnProcessor2_0] = DecoderAttnProcessor
    """The attention processor the VAE's attention layers get at every call (and before compiling) while they
    have diffusers' default processors or :class:`DecoderAttnProcessor`: a hook for subclasses (the speed
    benchmark's reference rows give it diffusers' ``AttnProcessor2_0``)."""
    model_cpu_offload_seq = "captioner->text_encoder->unet"
    _optional_components = ["aligner", "posterior_scheduler", "captioner", "captioner_processor", "perceptual"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        aligner: AlignmentModule | None = None,
        posterior_scheduler: RecurrentPosteriorScheduler | None = None,
        captioner: Any = None,
        captioner_processor: Any = None,
        perceptual: PerceptualFeatures | None = None,
        caption_instruction: str | None = None,
        caption_max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    ) -> None:
        super().__init__()
        if not is_integer_at_least(caption_max_new_tokens, 1):
            raise ValueError(f"caption_max_new_tokens must be a positive integer, got {caption_max_new_tokens!r}")
        check_instruction(caption_instruction)
        if not isinstance(scheduler, DDIMScheduler):
            logger.info(f"LD-RPS samples with DDIM: converting {type(scheduler).__name__} to DDIMScheduler.")
            scheduler = as_ddim_scheduler(scheduler)
        # A Stable Diffusion repository has neither LD-RPS component: both then take the paper's settings.
        aligner = AlignmentModule() if aligner is None else aligner
        posterior_scheduler = RecurrentPosteriorScheduler() if posterior_scheduler is None else posterior_scheduler
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            aligner=aligner,
            posterior_scheduler=posterior_scheduler,
            captioner=captioner,
            captioner_processor=captioner_processor,
            perceptual=perceptual,
        )
        self.register_to_config(caption_instruction=caption_instruction, caption_max_new_tokens=caption_max_new_tokens)
        # The prior is never trained: frozen parameters keep every gradient off the models.
        for model in (vae, text_encoder, unet, captioner, perceptual):
            if isinstance(model, torch.nn.Module):
                model.requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self._warned: set[str] = set()
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_resize=False, do_normalize=False
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """As in every diffusers pipeline, except that a scheduler assigned later
        (``pipe.scheduler = X.from_config(pipe.scheduler.config)``) becomes a DDIM scheduler with its
        config, as one given to ``__init__`` does, with a warning."""
        if name == "scheduler" and not isinstance(value, DDIMScheduler | None):
            logger.warning(
                f"LD-RPS samples with DDIM (eta = 0): the assigned {type(value).__name__} is converted to a "
                "DDIMScheduler with its config."
            )
            value = as_ddim_scheduler(value)
        super().__setattr__(name, value)

    def _warn_once(self, key: str, message: str) -> None:
        """Log ``message`` the first time ``key`` comes up for this pipeline: a loop over many images
        should not repeat it."""
        if key not in self._warned:
            logger.warning(message)
            self._warned.add(key)

    def _use_vae_attention(self) -> None:
        """The VAE's attention layers get :attr:`vae_attention_processor` while they have diffusers' default
        processors or :class:`DecoderAttnProcessor` (``attention_ldrps.use_vae_attention``)."""
        use_vae_attention(self.vae, self.vae_attention_processor)

    # ----------------------------------------------------------------------------------------
    # Properties, as in diffusers' pipelines
    # ----------------------------------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ----------------------------------------------------------------------------------------
    # Steps of a restoration
    # ----------------------------------------------------------------------------------------
    def check_inputs(
        self,
        num_inference_steps: int | None,
        recurrences: int | None,
        strength: float | None,
        guidance_scale: float,
        preset: str | None,
        operator: str | Operator | None,
        unet_batch_size: int | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        """Raise a ``ValueError`` that names the problem for any invalid argument."""
        check_schedule_arguments(num_inference_steps, recurrences, strength, preset)
        if not is_finite_number(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        resolve_operator(operator)  # an unknown name or an object that is not callable
        if unet_batch_size is not None and not is_integer_at_least(unet_batch_size, 1):
            raise ValueError(f"unet_batch_size must be a positive integer or None, got {unet_batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        check_callback_tensor_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)

    def _posterior_scheduler(self, preset: str | None, operator: Operator | None) -> RecurrentPosteriorScheduler:
        """The call's posterior scheduler: the component, with ``preset`` applied when one is given, and with a known
        ``operator`` no adversarial term (its ``D_g`` learns from ``f``'s residuals). Warns once when it weights a
        perceptual term and the pipeline has no ``perceptual`` component."""
        posterior = self.posterior_scheduler if preset is None else self.posterior_scheduler.with_preset(preset)
        if operator is not None:
            posterior = type(posterior).from_config(posterior.config, adversarial_weight=0.0)
        config = posterior.config
        perceptual_weighted = config.perceptual_weight > 0 or (operator is None and config.aligner_loss_weights[1] > 0)
        if self.perceptual is None and perceptual_weighted:
            self._warn_once(
                "no perceptual",
                "No `perceptual` component: the perceptual terms of the guidance and of the alignment module's "
                f"training are left out: {HOW_TO_GET_PERCEPTUAL_FEATURES}.",
            )
        return posterior

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """The latent size covering ``height x width`` pixels, padded to what the UNet's downsampling needs."""
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        unet_factor = multiple // self.vae_scale_factor
        return (
            math.ceil(height / multiple) * unet_factor,
            math.ceil(width / multiple) * unet_factor,
        )

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``x0(z) = (D(z / s) + 1) / 2`` in float32, cropped from the padded grid to ``height x width``."""
        with record_function(PROFILER_RANGES["decode"]):
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            if getattr(self.vae.config, "shift_factor", None) is not None:
                latents = latents + self.vae.config.shift_factor
            images = self.vae.decode(latents, return_dict=False)[0]
            return ((images.float() + 1) / 2)[..., :height, :width]

    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: int | torch.Tensor,
        embeds: torch.Tensor,
        guidance_scale: float,
        unet_batch_size: int | None = None,
    ) -> torch.Tensor:
        """The guided noise (or v) prediction of all samples, in float32.

        By default one batched UNet call covers all samples and both CFG branches;
        ``unet_batch_size`` splits that batch into calls of at most that many rows (less memory, slower).
        ``embeds`` decides the CFG: twice as many rows as ``latents`` means [uncond, cond] (see
        :class:`TextConditioning`), as many rows means the conditional prediction alone
        (``conditioning_ldrps.classifier_free_prediction``).
        """
        with record_function(PROFILER_RANGES["unet"]):
            return classifier_free_prediction(self.unet, latents, timestep, embeds, guidance_scale, unet_batch_size)

    def new_alignment_state(
        self,
        generator: torch.Generator | None,
        posterior: RecurrentPosteriorScheduler,
        device: torch.device,
        operator: Operator | None = None,
    ) -> AlignmentTrainer | KnownOperatorAlignment:
        """Fresh per-image state: ``f`` re-initialised from a seed drawn from the image's generator, its
        optimiser, ``D_f`` and (only when the adversarial guidance term is on) ``D_g``; with a known ``operator``,
        that operator in place of ``f`` and nothing to train (the seed is drawn all the same)."""
        seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device if generator else "cpu")
        )
        if operator is not None:
            return KnownOperatorAlignment(operator)
        config = posterior.config
        return AlignmentTrainer(
            self.aligner,
            seed=seed,
            device=device,
            f_discriminator_lr=posterior.f_discriminator_lr(self.aligner.config.variant),
            g_discriminator_lr=config.g_discriminator_lr if config.adversarial_weight > 0 else None,
            loss_weights=tuple(config.aligner_loss_weights),
            perceptual=self.perceptual.distance if self.perceptual is not None else None,
            perceptual_cap=config.aligner_perceptual_cap,
            perceptual_cap_factor=config.aligner_perceptual_cap_factor,
            compute_dtype=self.vae.dtype,
        )

    def _posterior_state(
        self,
        degraded: torch.Tensor,
        trainers: list[AlignmentTrainer | KnownOperatorAlignment],
        posterior: RecurrentPosteriorScheduler,
        learns_alignment: bool,
        non_finite: NonFiniteFlags,
    ) -> PosteriorState:
        """The :class:`PosteriorState` of a call on ``degraded`` (its perceptual features computed once), recording
        its losses and gradients in ``non_finite``."""
        _, _, height, width = degraded.shape
        scale = posterior.scale_for(height, width)
        return PosteriorState(
            trainers=trainers,
            degraded=degraded,
            num_samples=posterior.config.num_samples,
            scale=scale,
            exposure_patch_size=posterior.config.exposure_patch_size,
            exposure_tolerance=posterior.config.exposure_tolerance,
            exposure_input_tolerance=posterior.config.exposure_input_tolerance,
            perceptual_distance=self.perceptual.distance_to_features if self.perceptual is not None else None,
            degraded_features=self.perceptual(degraded).float() if self.perceptual is not None else None,
            learns_alignment=learns_alignment,
            non_finite=non_finite,
            backward_scale=float16_backward_scale(height, width, scale) if self.vae.dtype == torch.float16 else 1.0,
            aligner_warmup_steps=posterior.config.aligner_warmup_steps,
        )

    def _noise(self, generators: list, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Fresh noise for every image from its own generator: (B * S, C, h, w)."""
        return torch.cat([randn_tensor(shape, generator=g, device=device, dtype=torch.float32) for g in generators])

    @torch.no_grad()
    def __call__(
        self,
        image: PipelineImageInput,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = "",
        num_inference_steps: int | None = None,
        recurrences: int | None = None,
        strength: float | None = None,
        guidance_scale: float = 8.0,
        preset: str | None = None,
        operator: str | Operator | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        unet_batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> LDRPSPipelineOutput | tuple:
        """Restore degraded images.

        Args:
            image: the degraded image(s): PIL, numpy (H, W, 3) / (B, H, W, 3), torch (3, H, W) /
                (B, 3, H, W), uint8 or float in [0, 1], or a list; any size, restored at that size.
            prompt: what the clean image shows; given, it skips the captioner. ``None``: the
                captioner's caption, or "" (with a warning) without a captioner.
            negative_prompt: the negative prompt of classifier-free guidance (``None`` is ``""``).
            num_inference_steps: DDIM steps of pass 0 over the full schedule; ``None``: the posterior
                scheduler's (or preset's) value, 450 (the paper's) by default, 50 with ``preset="fast"``.
            recurrences: passes after pass 0; ``None``: the posterior scheduler's (or preset's) value, 2 by default.
            strength: the re-noising strength of a recurrence, in (0, 1]; ``None``: the scheduler's, 0.5 by default.
            guidance_scale: classifier-free guidance scale (paper: 8); <= 1 disables CFG.
            preset: ``"lowlight"``, ``"dehaze"``, ``"denoise"`` (the reference's per-task settings),
                ``"default"``, or ``"fast"`` (one sample, 50 + 25 steps); ``None`` uses the
                ``posterior_scheduler`` component as configured.
            operator: known-operator mode (beyond the paper): a known differentiable degradation ``A`` in place of the
                learned ``f``, by name (``operators_ldrps.OPERATORS``: ``"identity"``, ``"downsample_x4"``, ``"blur"``,
                ``"grayscale"``, ``"lowlight"``) or any callable (B, 3, H, W) -> (B, 3, H, W). The loss then uses
                ``A(x)``, nothing is trained, and the adversarial term is off (it needs ``f``'s ``D_g``).
            generator: a generator, or one per image for per-image reproducibility (a batch then
                gives exactly the images of separate runs).
            unet_batch_size: rows per UNet call (``None``: all samples and both CFG branches in one call).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return an :class:`LDRPSPipelineOutput` rather than ``(images, prompts)``.
            callback_on_step_end: called after every step of every pass as
                ``callback(pipe, step_index, timestep, callback_kwargs)``; may return replacements, and may
                set ``pipe._guidance_scale`` (diffusers' ``SDCFGCutoffCallback`` does). A diffusers
                ``PipelineCallback`` or ``MultiPipelineCallbacks`` brings its own ``tensor_inputs``.
            callback_on_step_end_tensor_inputs: which tensors ``callback_kwargs`` holds (default ``["latents"]``).

        Returns:
            :class:`LDRPSPipelineOutput` with ``images`` and ``prompts``, or the tuple ``(images, prompts)``.

        Raises:
            NonFiniteSampleError: at the end of a pass whose latents, guidance losses or gradients were not finite
                (a ``ValueError`` naming the pass, the images and what; ``guidance_ldrps.NonFiniteFlags``).
        """
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        # 0. Inputs, before any model runs: the arguments checked, the preset and a known operator resolved, the images
        #    read with one prompt and one generator each (the operator's output shape checked on them), the passes
        #    planned (Recurrence) with the guidance of each step (Guidance 2).
        self.check_inputs(
            num_inference_steps,
            recurrences,
            strength,
            guidance_scale,
            preset,
            operator,
            unet_batch_size,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        operator = resolve_operator(operator)
        posterior = self._posterior_scheduler(preset, operator)
        degraded, prompts, negative_prompts, generators = per_image_inputs(image, prompt, negative_prompt, generator)
        batch_size, _, height, width = degraded.shape
        device = self._execution_device
        self._use_vae_attention()
        degraded = degraded.to(device)
        if operator is not None:
            check_operator_output(operator, degraded)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        num_samples = posterior.config.num_samples
        passes, guidance_plans = posterior.plan_passes(num_inference_steps, self.scheduler, recurrences, strength)
        self._num_timesteps = sum(len(timesteps) for timesteps in passes)

        # 1. Text prompt (Components: text prompt): the given one, else the captioner's description of the clean image.
        prompts = self._prompts(prompts, degraded, posterior)

        # 2. CFG text embeddings (Components: CFG), the negative prompt "" by default, for every sample.
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative_prompts, device)
        text = TextConditioning.build(
            prompt_embeds, negative_prompt_embeds, num_samples, self.do_classifier_free_guidance
        )

        # 3. Fresh per-image state (Alignment module): f, D_f, D_g and their optimisers, or a known operator A in
        #    place of f (nothing to train), seeded from each image's generator (with the guidance off or an
        #    operator too, so that a seed gives the same noise), and P(y).
        trainers = [self.new_alignment_state(g, posterior, device, operator) for g in generators]
        non_finite = NonFiniteFlags(batch_size, device)  # read once per pass: no device sync per step
        learns = operator is None
        state = self._posterior_state(degraded, trainers, posterior, learns, non_finite) if posterior.guides else None

        # 4. Independent noise for every sample (Samples).
        latent_shape = (num_samples, self.unet.config.in_channels, *self.latent_grid(height, width))
        latents = self._noise(generators, latent_shape, device)

        # 5. Recurrent posterior sampling (Recurrence): each step the UNet with CFG, the DDIM update with the x0
        #    clip (Components: sampler, x0 clipping), the posterior guidance (Alignment module; Guidance), the callback.
        step_end = None
        if callback_on_step_end is not None:
            step_end = partial(run_step_end_callback, self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        step_index = 0
        advice = self._out_of_memory_advice(batch_size, height, width, num_samples, unet_batch_size)
        with advice, self.progress_bar(total=self._num_timesteps) as progress_bar:
            for pass_index, (timesteps, guidance_plan) in enumerate(zip(passes, guidance_plans, strict=True)):
                if self.interrupt:
                    break
                if pass_index > 0:  # Recurrence 2: the last result re-noised to the strength timestep
                    noise = self._noise(generators, latent_shape, device)
                    latents = posterior.renoise(latents, noise, timesteps[0], self.scheduler)
                # The UNet gets each timestep as a device tensor (copied once per pass): a Python int would
                # make a compiled UNet recompile at every step (dynamo specialises on int arguments).
                unet_timesteps = torch.tensor(timesteps, device=device)
                for t, unet_t, weights in zip(timesteps, unet_timesteps, guidance_plan, strict=True):
                    if self.interrupt:
                        break
                    with record_function(PROFILER_RANGES["step"]):
                        noise_pred = self.predict_noise(
                            latents, unet_t, text.cfg_embeds, self.guidance_scale, unet_batch_size
                        )
                        latents, pred_original_sample = posterior.step(noise_pred, t, latents, self.scheduler)
                        if state is not None:
                            latents = self.posterior_guidance(latents, pred_original_sample, weights, state)
                        if step_end is not None:
                            latents, text = step_end(step_index, t, latents, text)
                        non_finite.record("latents", latents)
                    step_index += 1
                    progress_bar.update()
                non_finite.check(pass_index, len(passes))

        # 6. The result (Recurrence 3): sample 0 of the last pass, decoded and cropped to the input's size.
        result = latents.unflatten(0, (batch_size, num_samples))[:, 0]
        images = result if output_type == "latent" else self._postprocess(result, height, width, output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, prompts
        return LDRPSPipelineOutput(images=images, prompts=prompts)

    def _postprocess(self, result: torch.Tensor, height: int, width: int, output_type: str) -> Any:
        """The images of ``output_type`` from the final latents of sample 0, decoded at ``height x width``."""
        restored = self.decode(result, height, width).clamp(0, 1)
        return self.image_processor.postprocess(restored, output_type=output_type)
