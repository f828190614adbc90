"""The reference code's costs as a pipeline (the speed benchmark's ``reference`` rows): every sample decoded
and backpropagated through the decoder at every step, with diffusers' default SDPA attention in the VAE.
"""

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.profiler import record_function

from ldrps_pipeline.guidance_ldrps import PosteriorState
from ldrps_pipeline.pipeline_ldrps import PROFILER_RANGES, LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import GuidanceWeights


class ReferenceCostPipeline(LDRPSPipeline):
    """BENCHMARK ONLY: LDRPSPipeline with the reference code's decoder costs, for ``ldrps-speed-benchmark``.

    At every step, guided or not, the x0 latents of ALL samples are decoded in one batch with a graph
    and the decoder is backpropagated for the whole batch, as the reference does (ALGORITHM.md, "Cost
    of the reference pattern": 900 decoder forward+backward passes at 2x512x512 per image; above the
    guidance gate its loss is 0 but the backward still runs). Only sample 0's gradient is used and
    only below the gate, so the restoration is the one of :class:`LDRPSPipeline` (up to float
    rounding); the extra work is wasted on purpose. Its VAE attention is diffusers' default SDPA, as the
    reference's is (the pipeline's ``vae_attention_processor`` hook; the other rows get
    :class:`~ldrps_pipeline.attention_ldrps.DecoderAttnProcessor` back at their next call). Do not use it
    to restore images.
    """

    vae_attention_processor = AttnProcessor2_0

    def posterior_guidance(
        self,
        latents: torch.Tensor,
        pred_original_sample: torch.Tensor,
        weights: GuidanceWeights | None,
        state: PosteriorState,
    ) -> torch.Tensor:
        """:meth:`LDRPSPipeline.posterior_guidance`, with every sample decoded and backpropagated at every step
        and the input's perceptual features recomputed at every guided step, under the same profiler ranges."""
        batch_size, _, height, width = state.degraded.shape
        z0 = pred_original_sample.detach().requires_grad_()
        with torch.enable_grad():
            decoded = self.decode(z0, height, width)
        with record_function(PROFILER_RANGES["alignment_training"]):
            state.train_alignment(decoded.detach().unflatten(0, (batch_size, state.num_samples)), weights is not None)
        if weights is None:
            # The reference's loss is 0 above the gate, and it still pays for the decoder backward.
            with torch.enable_grad(), record_function(PROFILER_RANGES["guidance_backward"]):
                torch.autograd.grad(0.0 * decoded.sum(), z0)
            return latents

        with torch.enable_grad():
            with record_function(PROFILER_RANGES["guidance_loss"]):
                # The reference recomputes the input's perceptual features at every step.
                degraded_features = self.perceptual(state.degraded).float() if self.perceptual is not None else None
                guided_estimates = decoded.unflatten(0, (batch_size, state.num_samples))[:, 0]
                loss = state.loss(guided_estimates, weights, degraded_features)
            with record_function(PROFILER_RANGES["guidance_backward"]):
                (gradient,) = torch.autograd.grad(-state.scale * loss, z0)
        return state.shift_sample_zero(latents, gradient.unflatten(0, (batch_size, state.num_samples))[:, 0])
