"""One image through the pipeline for the command: its settings made explicit, a stop request honoured at the
next step, a non-finite result retried once with safer settings, and every failure turned into one reason.

A non-finite result (NaN or infinity) is detected twice over, without a device sync in any step: the pipeline
raises :class:`~ldrps_pipeline.guidance_ldrps.NonFiniteSampleError` at the end of a pass whose latents, guidance
loss or gradient went non-finite (its flags are read once per pass), and the final pixels are checked on the host
(the decoder can overflow from finite latents, in half precision). The retry runs the pipeline in float32 (if it
was not) with half the posterior guidance scale (a copy of the posterior scheduler, put back afterwards); a
second non-finite result fails the image with both causes on one line, and nothing is written.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ldrps_pipeline.captioning_ldrps import caption_prompt
from ldrps_pipeline.cli.image_files import ImageFile
from ldrps_pipeline.guidance_ldrps import NonFiniteSampleError
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler

SAFER_POSTERIOR_SCALE_FACTOR = 0.5
"""The retry's posterior guidance scale, as a fraction of the first try's."""


@dataclass(frozen=True)
class RestorationOptions:
    """The command's restoration options (``None``: the preset's or the posterior scheduler's value; for
    ``operator``, the name of a built-in known operator, the learned alignment network)."""

    preset: str | None = None
    operator: str | None = None
    steps: int | None = None
    recurrences: int | None = None
    strength: float | None = None
    guidance_scale: float = 8.0
    seed: int = 0
    prompt: str | None = None
    low_memory: bool = False


@dataclass(frozen=True)
class Restoration:
    """A restored image: ``rgb`` (H, W, 3) float32 in [0, 1], the ``prompt`` used, the effective ``settings`` and,
    when the first try was not finite, the ``retry`` that gave the result."""

    rgb: np.ndarray
    prompt: str
    settings: dict[str, Any]
    retry: str | None = field(default=None)


class RestorationError(Exception):
    """An image that could not be restored; the message is the reason, one line."""


class RestorationInterrupted(Exception):
    """The run was asked to stop while the image was being restored; its result is abandoned."""


class _NonFiniteTry(Exception):
    """A try that went non-finite; the message says what and where (``non-finite latents, loss in pass 0``)."""


def posterior_for(pipe: LDRPSPipeline, preset: str | None) -> RecurrentPosteriorScheduler:
    """The posterior scheduler a call with ``preset`` uses."""
    return pipe.posterior_scheduler if preset is None else pipe.posterior_scheduler.with_preset(preset)


def effective_settings(
    pipe: LDRPSPipeline, options: RestorationOptions, posterior: RecurrentPosteriorScheduler
) -> dict[str, Any]:
    """Every setting a restoration with ``options`` and ``posterior`` runs with, defaults resolved."""
    config = posterior.config
    return {
        "operator": options.operator,
        "steps": options.steps if options.steps is not None else config.num_inference_steps,
        "recurrences": options.recurrences if options.recurrences is not None else config.recurrences,
        "strength": options.strength if options.strength is not None else config.strength,
        "guidance_scale": options.guidance_scale,
        "posterior_scale": config.posterior_scale,
        "num_samples": config.num_samples,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "captioner": getattr(pipe.captioner, "name_or_path", type(pipe.captioner).__name__) if pipe.captioner else None,
        "caption_instruction": pipe.config.caption_instruction,
        "perceptual": pipe.perceptual is not None,
        "low_memory": options.low_memory,
    }


def check_pass_plan(pipe: LDRPSPipeline, options: RestorationOptions) -> None:
    """Raise ``ValueError`` (the pipeline's message) when ``options`` give no valid pass plan, before any image."""
    posterior = posterior_for(pipe, options.preset)
    steps = options.steps if options.steps is not None else posterior.config.num_inference_steps
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    posterior.set_timesteps(steps, scheduler, options.recurrences, options.strength)


def check_caption_settings(pipe: LDRPSPipeline) -> None:
    """Raise ``ValueError`` (naming the captioner's family) when its instruction is one the captioner cannot follow,
    before any image."""
    if pipe.captioner is not None:
        caption_prompt(pipe.captioner, pipe.captioner_processor, pipe.config.caption_instruction)


def restore_image(
    pipe: LDRPSPipeline, image: ImageFile, options: RestorationOptions, stop_requested: Callable[[], bool]
) -> Restoration:
    """Restore ``image`` with ``options``.

    Raises:
        RestorationInterrupted: when ``stop_requested()`` became true during the restoration.
        RestorationError: out of device memory, a result not finite twice, or an image the pipeline refuses.
    """
    posterior = posterior_for(pipe, options.preset)
    try:
        rgb, prompt = _restore(pipe, image, options, options.preset, stop_requested)
        return Restoration(rgb, prompt, effective_settings(pipe, options, posterior))
    except _NonFiniteTry as error:
        first = str(error)
    safer = type(posterior).from_config(
        posterior.config, posterior_scale=posterior.config.posterior_scale * SAFER_POSTERIOR_SCALE_FACTOR
    )
    safer_settings = f"float32 with posterior_scale {safer.config.posterior_scale:g}"
    with _safer_pipeline(pipe, safer):
        try:
            rgb, prompt = _restore(pipe, image, options, None, stop_requested)
        except _NonFiniteTry as error:
            raise RestorationError(
                f"{first}, and {error} after a retry in {safer_settings}; nothing was written"
            ) from None
        settings = effective_settings(pipe, options, safer)
    return Restoration(rgb, prompt, settings, f"the first try had {first}; retried in {safer_settings}")


def _restore(
    pipe: LDRPSPipeline,
    image: ImageFile,
    options: RestorationOptions,
    preset: str | None,
    stop_requested: Callable[[], bool],
) -> tuple[np.ndarray, str]:
    def stop_at_step_end(pipe: LDRPSPipeline, step: int, timestep: int, tensors: dict) -> dict:
        if stop_requested():
            pipe._interrupt = True  # the documented way to stop the sampling loop
        return {}

    try:
        result = pipe(
            image.rgb,
            prompt=options.prompt,
            num_inference_steps=options.steps,
            recurrences=options.recurrences,
            strength=options.strength,
            guidance_scale=options.guidance_scale,
            preset=preset,
            operator=options.operator,
            generator=torch.Generator().manual_seed(options.seed),
            unet_batch_size=1 if options.low_memory else None,
            output_type="np",
            callback_on_step_end=stop_at_step_end,
        )
    except NonFiniteSampleError as error:
        if stop_requested():
            raise RestorationInterrupted from None
        what = ", ".join(error.faults[error.image_indices[0]])
        raise _NonFiniteTry(f"non-finite {what} in pass {error.pass_index}") from None
    except torch.OutOfMemoryError:
        if pipe.device.type == "cuda":
            torch.cuda.empty_cache()
        raise RestorationError(out_of_memory_advice(pipe, image, options)) from None
    except ValueError as error:
        raise RestorationError(str(error)) from None
    if stop_requested():
        raise RestorationInterrupted
    rgb = result.images[0]
    if not np.isfinite(rgb).all():
        raise _NonFiniteTry("non-finite pixels from the decoder")
    return rgb, result.prompts[0]


@contextlib.contextmanager
def _safer_pipeline(pipe: LDRPSPipeline, posterior: RecurrentPosteriorScheduler) -> Iterator[None]:
    """Inside the block, ``pipe`` runs in float32 with ``posterior``; its dtype and scheduler are put back after."""
    dtype, original = pipe.unet.dtype, pipe.posterior_scheduler
    pipe.posterior_scheduler = posterior
    if dtype != torch.float32:
        pipe.to(dtype=torch.float32)
    try:
        yield
    finally:
        pipe.posterior_scheduler = original
        if dtype != torch.float32:
            pipe.to(dtype=dtype)


def out_of_memory_advice(pipe: LDRPSPipeline, image: ImageFile, options: RestorationOptions) -> str:
    """What to say when restoring ``image`` ran out of device memory: its size, and the command's options not
    yet given that need less memory."""
    advice = [] if options.low_memory else ["--low-memory"]
    if pipe.unet.dtype == torch.float32 and pipe.device.type == "cuda":
        advice.append("--dtype bfloat16")
    if options.preset != "fast":
        advice.append("--preset fast (one sample, fewer steps)")
    width, height = image.size
    return (
        f"out of device memory restoring {width}x{height} px; what needs less memory: "
        f"{', '.join(advice) if advice else 'a smaller image'}"
    )
