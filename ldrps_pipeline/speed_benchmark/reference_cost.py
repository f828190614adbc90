"""The reference code's costs as a pipeline (the speed benchmark's ``reference`` rows): every sample decoded
and backpropagated through the decoder at every step, with diffusers' default SDPA attention in the VAE.
"""

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from ldrps_pipeline.alignment_ldrps import AlignmentTrainer
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler


class ReferenceCostPipeline(LDRPSPipeline):
    """BENCHMARK ONLY: LDRPSPipeline with the reference code's decoder costs, for ``ldrps-speed-benchmark``.

    At every step, guided or not, the x0 latents of ALL samples are decoded in one batch with a graph
    and the decoder is backpropagated for the whole batch, as the reference does (ALGORITHM.md, "Cost
    of the reference pattern": 900 decoder forward+backward passes at 2x512x512 per image; above the
    guidance gate its loss is 0 but the backward still runs). Only sample 0's gradient is used and
    only below the gate, so the restoration is the one of :class:`LDRPSPipeline` (up to float
    rounding); the extra work is wasted on purpose. Its VAE attention is diffusers' default SDPA, as the
    reference's is. Do not use it to restore images.
    """

    def _use_decoder_attention(self) -> None:
        """diffusers' default SDPA processor in the VAE, as the reference has (the other rows get
        :class:`~ldrps_pipeline.attention_ldrps.DecoderAttnProcessor` back at their next call)."""
        self.vae.set_attn_processor(AttnProcessor2_0())

    def posterior_gradient(
        self,
        pred_original_sample: torch.Tensor,
        degraded: torch.Tensor,
        trainers: list[AlignmentTrainer],
        posterior: RecurrentPosteriorScheduler,
        timestep: int,
        num_samples: int,
        degraded_features: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """:meth:`LDRPSPipeline.posterior_gradient`, with every sample decoded and backpropagated at every step."""
        batch_size, _, height, width = degraded.shape
        guided = posterior.guidance_enabled(timestep)
        z0 = pred_original_sample.detach().requires_grad_()
        with torch.enable_grad():
            decoded = self.decode(z0, height, width)
        estimates = decoded.detach().unflatten(0, (batch_size, num_samples))
        for trainer, image_estimates, y in zip(trainers, estimates, degraded.split(1), strict=True):
            trainer.train_step(image_estimates, y, cap_perceptual=guided)
        if not guided:
            # The reference's loss is 0 above the gate, and it still pays for the decoder backward.
            with torch.enable_grad():
                torch.autograd.grad(0.0 * decoded.sum(), z0)
            return None

        # The reference recomputes the input's perceptual features at every step.
        degraded_features = self.perceptual(degraded).float() if self.perceptual is not None else None
        with torch.enable_grad():
            guided_estimates = decoded.unflatten(0, (batch_size, num_samples))[:, 0]
            loss = self.guidance_loss(guided_estimates, degraded, trainers, posterior, timestep, degraded_features)
            (gradient,) = torch.autograd.grad(-posterior.scale_for(height, width) * loss, z0)
        return gradient.unflatten(0, (batch_size, num_samples))[:, 0]
