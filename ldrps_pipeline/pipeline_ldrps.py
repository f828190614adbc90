# Copyright 2026 The ldrps-pipeline authors. Licensed under the Apache License, Version 2.0.
# Parts of `encode_prompt`, the callback handling and the properties are adapted from diffusers'
# StableDiffusionPipeline (Copyright The HuggingFace Team, Apache License 2.0).
"""LD-RPS: zero-shot unified image restoration by latent-diffusion recurrent posterior sampling.

``LDRPSPipeline.__call__`` follows ALGORITHM.md step by step: each numbered comment there names the
section of ALGORITHM.md that its step implements, and :meth:`LDRPSPipeline.posterior_guidance` holds
what a denoising step does beyond DDIM (the training of the alignment states and the posterior guidance),
in the order of ALGORITHM.md. "Guidance" alone means the posterior guidance; classifier-free guidance is
"CFG" (its scale is diffusers' ``guidance_scale``).

Every sibling module this file needs is imported here directly (and none of them imports another),
so that diffusers' remote-code loader, which copies only a pipeline file's direct relative imports,
finds them all when this file is used as ``custom_pipeline`` or from a Hub export.
"""

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, is_xformers_available, logging
from diffusers.utils.torch_utils import randn_tensor
from torch.profiler import record_function
from transformers import CLIPTextModel, CLIPTokenizer

from .alignment_ldrps import AlignmentModule, AlignmentTrainer
from .attention_ldrps import DecoderAttnProcessor, has_default_attention, use_vae_attention
from .captioning_ldrps import caption_images
from .guidance_ldrps import PerceptualDistanceToFeatures, posterior_loss
from .inputs_ldrps import PipelineImageInput, image_to_tensor, per_image_generators, per_image_texts
from .perceptual_ldrps import PerceptualFeatures
from .scheduling_ldrps import (
    PRESETS,
    GuidanceWeights,
    RecurrentPosteriorScheduler,
    as_ddim_scheduler,
    is_finite_number,
    is_integer_at_least,
)

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

PROFILER_RANGES = {
    "step": "ldrps.step",
    "unet": "ldrps.unet",
    "decode": "ldrps.decode",
    "alignment_training": "ldrps.alignment_training",
    "guidance_loss": "ldrps.guidance_loss",
    "guidance_backward": "ldrps.guidance_backward",
}
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


@dataclass
class TextConditioning:
    """The UNet's text conditioning during a call.

    Args:
        prompt_embeds: the prompts' embeddings, one row per image (a step-end callback sees and may replace them).
        negative_prompt_embeds: the negative prompts' likewise, or ``None`` without CFG.
        num_samples: S, the latents per image.
        cfg_embeds: the UNet batch's rows built from them: [uncond of every sample, cond of every sample], or
            only the conditional rows without CFG or when both embeddings are equal (``uncond + s * (cond -
            uncond)`` is then ``cond``: the UNet batch halves and the result is the same).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    num_samples: int
    cfg_embeds: torch.Tensor

    @classmethod
    def build(
        cls, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None, num_samples: int, cfg: bool
    ) -> "TextConditioning":
        """The conditioning of ``num_samples`` samples per image, with CFG rows when ``cfg`` is on."""
        cond = prompt_embeds.repeat_interleave(num_samples, dim=0)
        cfg_embeds = cond
        if cfg and negative_prompt_embeds is not None and not torch.equal(negative_prompt_embeds, prompt_embeds):
            cfg_embeds = torch.cat([negative_prompt_embeds.repeat_interleave(num_samples, dim=0), cond])
        return cls(prompt_embeds, negative_prompt_embeds, num_samples, cfg_embeds)


@dataclass
class PosteriorState:
    """What the posterior guidance works with during one call: built once per call, before the sampling,
    and dropped with the call (:meth:`LDRPSPipeline.posterior_guidance`).

    Args:
        trainers: each image's fresh alignment state (``f``, ``D_f``, ``D_g`` and their optimisers).
        degraded: ``y``, (B, 3, H, W).
        num_samples: S, the latents per image (sample 0 is the result).
        scale: the guidance step size at this image size (``RecurrentPosteriorScheduler.scale_for``).
        exposure_patch_size: the pooling size of the exposure loss.
        perceptual_distance: ``P`` against precomputed features, or ``None`` without a ``perceptual`` component.
        degraded_features: the perceptual features of ``y`` (computed once), or ``None``.
    """

    trainers: list[AlignmentTrainer]
    degraded: torch.Tensor
    num_samples: int
    scale: float
    exposure_patch_size: int
    perceptual_distance: PerceptualDistanceToFeatures | None
    degraded_features: torch.Tensor | None

    def train_alignment(self, estimates: torch.Tensor, cap_perceptual: bool) -> None:
        """ALGORITHM.md, "Alignment module", steps 1-2, for every image: one Adam step of ``D_f``, then one of
        ``f``, on the estimates of all its samples (``estimates``: (B, S, 3, H, W), detached); ``cap_perceptual``
        below the guidance gate."""
        for trainer, image_estimates, y in zip(self.trainers, estimates, self.degraded.split(1), strict=True):
            trainer.train_step(image_estimates, y, cap_perceptual=cap_perceptual)

    def shift_sample_zero(self, latents: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``latents`` (B * S, C, h, w) with ``shift`` (B, C, h, w) added to sample 0 of every image."""
        latents = latents.unflatten(0, (self.degraded.shape[0], self.num_samples))
        latents[:, 0] += shift
        return latents.flatten(0, 1)


class LDRPSPipeline(DiffusionPipeline):
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
            re-initialised for every image).
        posterior_scheduler: the recurrent posterior schedule, gates, weights and presets.
        captioner: optional transformers image-text-to-text model that writes the prompt.
        captioner_processor: its processor.
        perceptual: optional VGG16 ``features[:9]`` extractor for the perceptual terms.
    """

    vae_attention_processor: type[AttnProcessor2_0] = DecoderAttnProcessor
    """The attention processor the VAE's attention layers get at every call (and before compiling) while they
    have diffusers' default processors or :class:`DecoderAttnProcessor`: a hook for subclasses (the speed
    benchmark's reference rows give it diffusers' ``AttnProcessor2_0``)."""
    model_cpu_offload_seq = "captioner->text_encoder->unet"
    _optional_components = ["captioner", "captioner_processor", "perceptual"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        aligner: AlignmentModule,
        posterior_scheduler: RecurrentPosteriorScheduler,
        captioner: Any = None,
        captioner_processor: Any = None,
        perceptual: PerceptualFeatures | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            logger.info(f"LD-RPS samples with DDIM: converting {type(scheduler).__name__} to DDIMScheduler.")
            scheduler = as_ddim_scheduler(scheduler)
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
        # The prior is never trained: frozen parameters keep every gradient off the models.
        for model in (vae, text_encoder, unet, captioner, perceptual):
            if isinstance(model, torch.nn.Module):
                model.requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self._xformers_attention: bool | None = None
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
    # Speed options
    # ----------------------------------------------------------------------------------------
    @property
    def xformers_attention(self) -> bool | None:
        """Whether xformers attention was switched on (``True``) or off (``False``) explicitly, or ``None``:
        left to the pipeline, which switches it on at the first CUDA call when xformers is installed."""
        return self._xformers_attention

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op: Callable | None = None) -> None:
        """diffusers' switch behind ``enable_/disable_xformers_memory_efficient_attention``; the choice is
        remembered, so that the automatic switch-on of the first CUDA call never overrides it."""
        super().set_use_memory_efficient_attention_xformers(valid, attention_op)
        self._xformers_attention = valid

    def _use_xformers_if_installed(self, device: torch.device) -> None:
        """On CUDA, switch xformers' memory-efficient attention on when it is installed, unless it was
        switched on or off explicitly or the attention processors are not diffusers' defaults; otherwise, or
        when the installed xformers cannot run here (with a warning), the attention stays as it is (SDPA)."""
        if device.type != "cuda" or self._xformers_attention is not None or not is_xformers_available():
            return
        if not has_default_attention(self.unet, self.vae):
            return  # the user's own attention processors are never replaced
        try:
            self.enable_xformers_memory_efficient_attention()
        except Exception as error:  # installed, but e.g. built without kernels for this card or torch
            logger.warning(f"xformers is installed but cannot be used here ({error!r}); keeping SDPA attention.")
            self.disable_xformers_memory_efficient_attention()

    def enable_torch_compile(self, small_networks: bool = False, **compile_options: Any) -> None:
        """Compile the big modules that every step runs with ``torch.compile``: the UNet and the VAE decoder.

        With ``small_networks=True`` also the perceptual features and the alignment networks that each
        image trains (``f`` and the discriminators, through :meth:`AlignmentModule.compile_trainer_networks`).
        They are left eager by default because the restoration was slower with them compiled: on an H200
        (torch 2.11, bf16, 512x512, the paper's settings) 61.2 s per image against 58.2 s, most of it in the
        unguided steps (68.7 against 47.9 ms). Their kernels are small, and a compiled call's host cost
        (guards, the autograd wrapper) outweighs what fusing them saves.

        The modules are compiled in place (:meth:`torch.nn.Module.compile`), so their weights, their
        ``save_pretrained`` and the results stay the same. ``compile_options`` go to ``torch.compile``,
        e.g. ``mode="max-autotune-no-cudagraphs"`` or ``backend``. The first steps pay for the
        compilation, and the decoder compiles once more when its backward first runs below the guidance
        gate. Shapes are static unless ``dynamic`` is given: every new image size or batch compiles
        anew, because inductor 2.13 failed on this pipeline's symbolic shapes (a ``TypeError`` on a
        relational of symbolic sizes) once a second shape made them dynamic. After dynamo's
        ``torch._dynamo.config.recompile_limit`` versions of one function (8 by default; each size,
        batch, grad mode and autocast state is one) further shapes run eagerly, with a warning: raise
        that limit when restoring images of many sizes. The VAE's default attention processors become
        :class:`DecoderAttnProcessor` first; otherwise the processors stay as they are (SDPA by default,
        which inductor compiles): no automatic switch to xformers follows. CUDA-graph modes
        (``mode="reduce-overhead"``) are the fastest measured: 49.0 s per image on an H200 against 58.2 s
        for the default mode, with a private memory pool and new graphs recorded for every new shape. They
        fail with ``small_networks=True``: the alignment module's compiled output is overwritten by its
        next call before the perceptual features read it (a CUDA-graph replay reuses its output buffers),
        which torch reports as an error.

        A bfloat16 VAE on the CPU keeps its decoder uncompiled, with a warning: there inductor's C++
        backend (torch 2.13) returned an all-zero gradient through the decoder's up-blocks (a resnet
        followed by the nearest-upsampling convolution), which silently switched the guidance off. Its
        fusion pass re-reads a node's dependencies without the renames of a mutated buffer, so the cast
        of the upsampling's scatter-add result runs before the scatter-add (traced in
        ``examples/inductor_bf16_grad_repro.py``; CUDA's Triton backend does not take that path). Call
        this after moving the pipeline to the GPU, or compile a float32 pipeline on the CPU.
        """
        if self._xformers_attention is None:
            # No switch-on of xformers at the first CUDA call: it would change the compiled modules' attention
            # afterwards, and inductor compiles SDPA (diffusers' default) while xformers' kernels are opaque to it.
            # The attention processors themselves are left as they are.
            self._xformers_attention = False
        use_vae_attention(
            self.vae, self.vae_attention_processor
        )  # before compiling: the processors are traced with the decoder
        compile_options.setdefault("dynamic", False)
        self.unet.compile(**compile_options)
        inductor = compile_options.get("backend", "inductor") == "inductor"
        if inductor and self.vae.dtype == torch.bfloat16 and self.vae.device.type == "cpu":
            logger.warning(
                "enable_torch_compile: the VAE decoder is left uncompiled, because inductor's C++ backend "
                "(torch 2.13) gave all-zero guidance gradients through a bfloat16 decoder on the CPU. Call "
                "enable_torch_compile after moving the pipeline to the GPU, or use float32 on the CPU."
            )
        else:
            self.vae.decoder.compile(**compile_options)
        if small_networks:
            if self.perceptual is not None:
                self.perceptual.compile(**compile_options)
            self.aligner.compile_trainer_networks(**compile_options)

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
        unet_batch_size: int | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        """Raise a ``ValueError`` that names the problem for any invalid argument."""
        if num_inference_steps is not None and not is_integer_at_least(num_inference_steps, 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if recurrences is not None and not is_integer_at_least(recurrences, 0):
            raise ValueError(f"recurrences must be a non-negative integer, got {recurrences!r}")
        if strength is not None and not (is_finite_number(strength, positive=True) and strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if not is_finite_number(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if unet_batch_size is not None and not is_integer_at_least(unet_batch_size, 1):
            raise ValueError(f"unet_batch_size must be a positive integer or None, got {unet_batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(callback_on_step_end_tensor_inputs, list | tuple):
            raise ValueError(
                "callback_on_step_end_tensor_inputs must be a list of names, e.g. ['latents'], "
                f"got {callback_on_step_end_tensor_inputs!r}"
            )
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}"
            )

    def _posterior_scheduler(self, preset: str | None) -> RecurrentPosteriorScheduler:
        """The call's posterior scheduler: the component, with ``preset`` applied when one is given. Warns once
        when it weights a perceptual term and the pipeline has no ``perceptual`` component."""
        posterior = self.posterior_scheduler if preset is None else self.posterior_scheduler.with_preset(preset)
        perceptual_weighted = posterior.config.perceptual_weight > 0 or posterior.config.aligner_loss_weights[1] > 0
        if self.perceptual is None and perceptual_weighted:
            self._warn_once(
                "no perceptual",
                "No `perceptual` component: the perceptual terms of the guidance and of the alignment module's "
                "training are left out (load VGG16 features with PerceptualFeatures.from_vgg16_state_dict).",
            )
        return posterior

    def _prompts(
        self, prompts: list[str] | None, degraded: torch.Tensor, posterior: RecurrentPosteriorScheduler
    ) -> list[str]:
        """The given prompts, else the captioner's (when the posterior scheduler uses captions), else ``""``."""
        if prompts is not None:
            return prompts
        if posterior.config.use_caption and self.captioner is not None:
            return self.caption(degraded)
        if posterior.config.use_caption:
            self._warn_once("no captioner", "No prompt and no captioner: restoring with the empty prompt.")
        return [""] * degraded.shape[0]

    def caption(self, images: torch.Tensor) -> list[str]:
        """Ask the captioner what the clean version of each image (B, 3, H, W in [0, 1]) shows.

        On an accelerator, a captioner that is not under diffusers' offload hooks is moved there for
        the captions and back to the CPU right after, so that it holds no accelerator memory while sampling.
        """
        pil_images = self.image_processor.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().numpy())
        device = self._execution_device
        offload = device.type != "cpu" and not hasattr(self.captioner, "_hf_hook")
        if offload:
            self.captioner.to(device)
        try:
            return caption_images(self.captioner, self.captioner_processor, pil_images)
        finally:
            if offload:
                self.captioner.to("cpu")

    def encode_prompt(
        self, prompts: list[str], negative_prompts: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings of the prompts and, with classifier-free guidance, of the negative prompts."""

        def encode(texts: list[str]) -> torch.Tensor:
            tokens = self.tokenizer(
                texts,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            return self.text_encoder(tokens.input_ids.to(device))[0]

        prompt_embeds = encode(prompts)
        negative_prompt_embeds = encode(negative_prompts) if self.do_classifier_free_guidance else None
        return prompt_embeds, negative_prompt_embeds

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
        ``_cfg_embeddings``), as many rows means the conditional prediction alone.
        """
        classifier_free = embeds.shape[0] == 2 * latents.shape[0]
        model_input = torch.cat([latents, latents]) if classifier_free else latents
        model_input = model_input.to(self.unet.dtype)
        rows = unet_batch_size or model_input.shape[0]
        with record_function(PROFILER_RANGES["unet"]):
            prediction = torch.cat(
                [
                    self.unet(chunk, timestep, encoder_hidden_states=chunk_embeds, return_dict=False)[0]
                    for chunk, chunk_embeds in zip(model_input.split(rows), embeds.split(rows), strict=True)
                ]
            ).float()
        if not classifier_free:
            return prediction
        uncond, cond = prediction.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def new_alignment_state(
        self, generator: torch.Generator | None, posterior: RecurrentPosteriorScheduler, device: torch.device
    ) -> AlignmentTrainer:
        """Fresh per-image state: ``f`` re-initialised from a seed drawn from the image's generator, its
        optimiser, ``D_f`` and (only when the adversarial guidance term is on) ``D_g``."""
        seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device if generator else "cpu")
        )
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
        self, degraded: torch.Tensor, trainers: list[AlignmentTrainer], posterior: RecurrentPosteriorScheduler
    ) -> PosteriorState:
        """The :class:`PosteriorState` of a call on ``degraded`` (its perceptual features computed once)."""
        _, _, height, width = degraded.shape
        return PosteriorState(
            trainers=trainers,
            degraded=degraded,
            num_samples=posterior.config.num_samples,
            scale=posterior.scale_for(height, width),
            exposure_patch_size=posterior.config.exposure_patch_size,
            perceptual_distance=self.perceptual.distance_to_features if self.perceptual is not None else None,
            degraded_features=self.perceptual(degraded).float() if self.perceptual is not None else None,
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
        generator: torch.Generator | list[torch.Generator] | None = None,
        unet_batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
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
        """
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        # 0. Inputs, before any model runs: the arguments checked, the preset resolved, the images read with one
        #    prompt and one generator each, and the pass plan with each step's guidance (Recurrence; Guidance 2).
        self.check_inputs(
            num_inference_steps,
            recurrences,
            strength,
            guidance_scale,
            preset,
            unet_batch_size,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        posterior = self._posterior_scheduler(preset)
        degraded = image_to_tensor(image)
        batch_size, _, height, width = degraded.shape
        prompts = per_image_texts(prompt, batch_size, "prompt")
        negative_prompts = per_image_texts(
            "" if negative_prompt is None else negative_prompt, batch_size, "negative_prompt"
        )
        generators = per_image_generators(generator, batch_size)
        device = self._execution_device
        self._use_xformers_if_installed(device)
        use_vae_attention(self.vae, self.vae_attention_processor)
        degraded = degraded.to(device)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        num_samples = posterior.config.num_samples
        if num_inference_steps is None:
            num_inference_steps = posterior.config.num_inference_steps
        passes = posterior.set_timesteps(int(num_inference_steps), self.scheduler, recurrences, strength)
        guidance_plans = [posterior.guidance_plan(timesteps) for timesteps in passes]
        self._num_timesteps = sum(len(timesteps) for timesteps in passes)

        # 1. Text prompt (Components: text prompt): the given one, else the captioner's description of the clean image.
        prompts = self._prompts(prompts, degraded, posterior)

        # 2. CFG text embeddings (Components: CFG), the negative prompt "" by default, for every sample.
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative_prompts, device)
        text = TextConditioning.build(
            prompt_embeds, negative_prompt_embeds, num_samples, self.do_classifier_free_guidance
        )

        # 3. Fresh per-image state (Alignment module): f, D_f, D_g and their optimisers, seeded from each image's
        #    generator (with the guidance off too, so that a seed gives the same noise), and P(y).
        trainers = [self.new_alignment_state(g, posterior, device) for g in generators]
        state = self._posterior_state(degraded, trainers, posterior) if posterior.guides else None

        # 4. Independent noise for every sample (Samples).
        latent_shape = (num_samples, self.unet.config.in_channels, *self.latent_grid(height, width))
        latents = self._noise(generators, latent_shape, device)

        # 5. Recurrent posterior sampling (Recurrence): each step the UNet with CFG, the DDIM update with the x0
        #    clip (Components: sampler, x0 clipping), the posterior guidance (Alignment module; Guidance), the callback.
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
                        if callback_on_step_end is not None:
                            latents, text = self._step_end_callback(
                                callback_on_step_end, callback_on_step_end_tensor_inputs, step_index, t, latents, text
                            )
                    step_index += 1
                    progress_bar.update()

        # 6. The result (Recurrence 3): sample 0 of the last pass, decoded and cropped to the input's size.
        result = latents.unflatten(0, (batch_size, num_samples))[:, 0]
        images = result if output_type == "latent" else self._postprocess(result, height, width, output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, prompts
        return LDRPSPipelineOutput(images=images, prompts=prompts)

    def posterior_guidance(
        self,
        latents: torch.Tensor,
        pred_original_sample: torch.Tensor,
        weights: GuidanceWeights | None,
        state: PosteriorState,
    ) -> torch.Tensor:
        """One step's posterior guidance, after its DDIM update: the alignment states trained on every sample's
        clean estimate, and below the guidance gate sample 0 of every image moved along the gradient of the
        guidance loss (ALGORITHM.md, "Alignment module" steps 1-2 and "Guidance (posterior) term" steps 1-5).

        An intended extension point: a subclass may override it to change what the posterior guidance of a step
        does or costs, and nothing else (the speed benchmark's ``ReferenceCostPipeline`` decodes and
        backpropagates every sample at every step, as the reference code does). An override should keep the
        profiler ranges of :data:`PROFILER_RANGES` around the same phases.

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
        # Guidance 1: x = x0(z0_hat) of every sample, with a graph to z0_hat only for sample 0 and when guided.
        z0, estimate, estimates = self._decode_estimates(pred_original_sample, state, graph=guided)
        # Alignment module 1-2: D_f, then f, take one Adam step on the (detached) estimates of all samples.
        with record_function(PROFILER_RANGES["alignment_training"]):
            state.train_alignment(estimates, cap_perceptual=guided)
        # Guidance 2: no guidance for t >= guidance_start.
        if not guided:
            return latents
        with torch.enable_grad():
            # Guidance 3-4: L of sample 0 of every image, y_hat = f(x) and D_g's Adam step included.
            with record_function(PROFILER_RANGES["guidance_loss"]):
                loss = posterior_loss(
                    estimate,
                    state.degraded,
                    state.trainers,
                    weights,
                    exposure_patch_size=state.exposure_patch_size,
                    perceptual_distance=state.perceptual_distance,
                    degraded_features=state.degraded_features,
                )
            # Guidance 5: g = grad(-scale * L, z0_hat); z_{t-1} <- z_{t-1} + g for sample 0.
            with record_function(PROFILER_RANGES["guidance_backward"]):
                (gradient,) = torch.autograd.grad(-state.scale * loss, z0)
        return state.shift_sample_zero(latents, gradient)

    def _decode_estimates(
        self, pred_original_sample: torch.Tensor, state: PosteriorState, graph: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """The clean estimates ``x0(z0_hat)`` of every sample, one decode per sample index over all images (every
        decode of a restoration then has one shape: a compiled decoder builds one graph per grad mode only).

        Returns:
            ``(z0, estimate, estimates)``: with ``graph``, the x0 latent of sample 0 as a leaf that requires grad
            and its decode with a graph to it (else ``None, None``); and the detached estimates of all
            samples, (B, S, 3, H, W).
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
        decoded += [self.decode(latents[:, sample], height, width) for sample in range(1, state.num_samples)]
        return z0, estimate, torch.stack(decoded, dim=1)

    def _step_end_callback(
        self,
        callback: Callable[[Any, int, int, dict], dict] | PipelineCallback | MultiPipelineCallbacks,
        tensor_inputs: list[str],
        step_index: int,
        timestep: int,
        latents: torch.Tensor,
        text: TextConditioning,
    ) -> tuple[torch.Tensor, TextConditioning]:
        """Run ``callback_on_step_end`` as diffusers' pipelines do: it gets the tensors named in ``tensor_inputs``
        and may return replacements, or set ``pipe._guidance_scale``. The UNet's rows are rebuilt when it was
        given the embeddings, or switched CFG on or off. Returns the latents and conditioning of the next step."""
        available = {
            "latents": latents,
            "prompt_embeds": text.prompt_embeds,
            "negative_prompt_embeds": text.negative_prompt_embeds,
        }
        callback_kwargs = {name: available[name] for name in tensor_inputs}
        classifier_free = self.do_classifier_free_guidance
        outputs = callback(self, step_index, timestep, callback_kwargs)
        latents = outputs.pop("latents", latents)
        prompt_embeds = outputs.pop("prompt_embeds", text.prompt_embeds)
        negative_prompt_embeds = outputs.pop("negative_prompt_embeds", text.negative_prompt_embeds)
        embeddings_given = "prompt_embeds" in callback_kwargs or "negative_prompt_embeds" in callback_kwargs
        if embeddings_given or classifier_free != self.do_classifier_free_guidance:
            cfg = self.do_classifier_free_guidance
            return latents, TextConditioning.build(prompt_embeds, negative_prompt_embeds, text.num_samples, cfg)
        return latents, TextConditioning(prompt_embeds, negative_prompt_embeds, text.num_samples, text.cfg_embeds)

    def _postprocess(self, result: torch.Tensor, height: int, width: int, output_type: str) -> Any:
        """The images of ``output_type`` from the final latents of sample 0, decoded at ``height x width``."""
        restored = self.decode(result, height, width).clamp(0, 1)
        return self.image_processor.postprocess(restored, output_type=output_type)

    @contextlib.contextmanager
    def _out_of_memory_advice(
        self, batch_size: int, height: int, width: int, num_samples: int, unet_batch_size: int | None
    ) -> Iterator[None]:
        """Re-raise a device out-of-memory error of the sampling loop with the options, not yet in use, that
        need less memory (the original error is chained, its message kept)."""
        try:
            yield
        except torch.OutOfMemoryError as error:
            options = []
            if not getattr(self.vae, "use_tiling", True):
                options.append("pipe.vae.enable_tiling() (the decoder works in tiles)")
            if not self.vae.is_gradient_checkpointing:
                options.append("pipe.vae.enable_gradient_checkpointing() (the guidance backward keeps less)")
            if self.unet.dtype == torch.float32 and self._execution_device.type == "cuda":
                options.append("pipe.to(torch.bfloat16) (half the weights and activations)")
            if unet_batch_size is None or unet_batch_size > 1:
                options.append("unet_batch_size=1 (one UNet row per call)")
            if num_samples > 1:
                options.append('preset="fast" or a posterior scheduler with num_samples=1 (one sample)')
            if batch_size > 1:
                options.append("fewer images per call")
            advice = "; ".join(options) if options else "a smaller image"
            raise torch.OutOfMemoryError(
                f"LD-RPS ran out of device memory restoring {batch_size} image(s) of {height}x{width}. "
                f"What needs less memory: {advice}.\n{error}"
            ) from error
