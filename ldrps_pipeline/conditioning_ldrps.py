# Copyright 2026 The ldrps-pipeline authors. Licensed under the Apache License, Version 2.0.
# `PromptEncoding.encode_prompt` and `run_step_end_callback` are adapted from the prompt encoding and the callback
# handling of diffusers' StableDiffusionPipeline
# (Copyright The HuggingFace Team, Apache License 2.0).
"""The UNet's text conditioning during an LD-RPS call (the prompts' embeddings, the rows of classifier-free guidance, CFG, and the guided
prediction they give) and diffusers' step-end callbacks, which may replace the embeddings or switch CFG on or off.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

StepEndCallback = Callable[[Any, int, int, dict], dict] | PipelineCallback | MultiPipelineCallbacks
"""``callback(pipe, step_index, timestep, callback_kwargs) -> replacements``, or a diffusers callback object."""


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


class PromptEncoding:
    """Step 2 of :class:`LDRPSPipeline` (ALGORITHM.md, "Components: CFG"): the text embeddings of a call's prompts.
    A mixin of the pipeline, which supplies the ``tokenizer`` and ``text_encoder`` components and
    ``do_classifier_free_guidance``."""

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


def classifier_free_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timestep: int | torch.Tensor,
    embeds: torch.Tensor,
    guidance_scale: float,
    unet_batch_size: int | None = None,
) -> torch.Tensor:
    """The guided noise (or v) prediction of all samples, in float32: ``uncond + s * (cond - uncond)``.

    One UNet call covers all samples and both CFG branches unless ``unet_batch_size`` splits the batch into calls
    of at most that many rows. ``embeds`` has twice as many rows as ``latents`` ([uncond, cond],
    :attr:`TextConditioning.cfg_embeds`) for CFG, or as many for the conditional prediction alone.
    """
    classifier_free = embeds.shape[0] == 2 * latents.shape[0]
    model_input = (torch.cat([latents, latents]) if classifier_free else latents).to(unet.dtype)
    rows = unet_batch_size or model_input.shape[0]
    prediction = torch.cat(
        [
            unet(chunk, timestep, encoder_hidden_states=chunk_embeds, return_dict=False)[0]
            for chunk, chunk_embeds in zip(model_input.split(rows), embeds.split(rows), strict=True)
        ]
    ).float()
    if not classifier_free:
        return prediction
    uncond, cond = prediction.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def check_callback_tensor_inputs(names: Any, allowed: list[str]) -> None:
    """Raise ``ValueError`` unless ``names`` is a list (or tuple) of names among ``allowed``."""
    if not isinstance(names, list | tuple):
        raise ValueError(f"callback_on_step_end_tensor_inputs must be a list of names, e.g. ['latents'], got {names!r}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among {allowed}")


def run_step_end_callback(
    pipe: Any,
    callback: StepEndCallback,
    tensor_inputs: list[str],
    step_index: int,
    timestep: int,
    latents: torch.Tensor,
    text: TextConditioning,
) -> tuple[torch.Tensor, TextConditioning]:
    """Run ``callback_on_step_end`` as diffusers' pipelines do: it gets ``pipe`` and the tensors named in
    ``tensor_inputs``, and may return replacements or set ``pipe._guidance_scale``. The UNet's rows are rebuilt
    when it was given the embeddings, or switched CFG on or off (``pipe.do_classifier_free_guidance``).

    Returns:
        The latents and the text conditioning of the next step.
    """
    available = {
        "latents": latents,
        "prompt_embeds": text.prompt_embeds,
        "negative_prompt_embeds": text.negative_prompt_embeds,
    }
    callback_kwargs = {name: available[name] for name in tensor_inputs}
    classifier_free = pipe.do_classifier_free_guidance
    outputs = callback(pipe, step_index, timestep, callback_kwargs)
    latents = outputs.pop("latents", latents)
    prompt_embeds = outputs.pop("prompt_embeds", text.prompt_embeds)
    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", text.negative_prompt_embeds)
    embeddings_given = "prompt_embeds" in callback_kwargs or "negative_prompt_embeds" in callback_kwargs
    if embeddings_given or classifier_free != pipe.do_classifier_free_guidance:
        cfg = pipe.do_classifier_free_guidance
        return latents, TextConditioning.build(prompt_embeds, negative_prompt_embeds, text.num_samples, cfg)
    return latents, TextConditioning(prompt_embeds, negative_prompt_embeds, text.num_samples, text.cfg_embeds)
