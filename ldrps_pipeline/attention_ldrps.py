# Copyright 2026 The ldrps-pipeline authors. Licensed under the Apache License, Version 2.0.
# `DecoderAttnProcessor.__call__` is adapted from diffusers' `AttnProcessor2_0`
# (Copyright The HuggingFace Team, Apache License 2.0).
"""The attention processor of the VAE decoder, whose backward runs at every guided step, and its switching-on,
which the pipeline does on its own only over diffusers' default processors (never over xformers, switched on with
diffusers' ``pipe.enable_xformers_memory_efficient_attention()``, or your own processors).

This module imports no sibling module, so the Hub export can ship it next to the pipeline file.
"""

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

DECODER_ATTENTION_MAX_TOKENS = 4096
"""Positions up to which :class:`DecoderAttnProcessor` writes the attention out (a 64x64 latent: 512x512 px)."""


class DecoderAttnProcessor(AttnProcessor2_0):
    """Self-attention written out as ``softmax(Q K^T / sqrt(d)) V``, scores and softmax in float32, for up to
    ``max_tokens`` positions; diffusers' SDPA processor (this class's parent) beyond, and for masked or
    cross-attention.

    The SD VAE's decoder has one attention layer with a single 512-wide head. Flash kernels do not take
    that width, so SDPA falls back to its memory-efficient kernel, whose backward took 5.8 ms of every
    guided step on an H200 (the guidance differentiates through the decoder), where the written-out
    form is two matrix products. Its score matrix holds ``tokens**2`` floats per image (64 MiB at
    4096 positions), hence the cap: larger inputs keep SDPA's memory-efficient kernel.

    Args:
        max_tokens: the most positions (latent height x width) attended to in the written-out form.
    """

    def __init__(self, max_tokens: int = DECODER_ATTENTION_MAX_TOKENS) -> None:
        super().__init__()
        self.max_tokens = max_tokens

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        tokens = (
            hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.ndim == 4 else hidden_states.shape[1]
        )
        if tokens > self.max_tokens or encoder_hidden_states is not None or attention_mask is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # SDPA's scale, 1 / sqrt(head width), as the parent processor uses (not attn.scale).
        scores = torch.bmm(query.float(), key.float().transpose(1, 2)) * query.shape[-1] ** -0.5
        probabilities = F.softmax(scores, dim=-1).to(value.dtype)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


DIFFUSERS_DEFAULT_PROCESSORS = (AttnProcessor, AttnProcessor2_0)
"""diffusers' default attention processors (eager and SDPA)."""


def has_default_attention(*models: torch.nn.Module) -> bool:
    """Whether every attention layer of ``models`` (diffusers models) still has diffusers' default processor or
    :class:`DecoderAttnProcessor`: processors that the pipeline may replace."""
    return all(
        type(processor) in (*DIFFUSERS_DEFAULT_PROCESSORS, DecoderAttnProcessor)
        for model in models
        for processor in model.attn_processors.values()
    )


def use_vae_attention(vae: torch.nn.Module, processor_class: type[AttnProcessor2_0]) -> None:
    """Give the VAE's attention layers a ``processor_class()`` while they have diffusers' default processors or
    :class:`DecoderAttnProcessor` and are not all of ``processor_class`` already; xformers, once switched on,
    and your own processors stay."""
    processors = vae.attn_processors.values()
    if processors and has_default_attention(vae) and any(type(p) is not processor_class for p in processors):
        vae.set_attn_processor(processor_class())
