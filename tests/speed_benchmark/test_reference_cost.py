"""The reference-cost pipeline of the speed benchmark's ``reference`` rows: the same restoration as the default."""

import pytest
import torch

from ldrps_pipeline.speed_benchmark.reference_cost import ReferenceCostPipeline
from ldrps_pipeline.speed_benchmark.specs import variant
from tiny_components import tiny_image, tiny_pipeline


@pytest.mark.parametrize("preset", [None, "lowlight"])
def test_reference_cost_pipeline_restores_the_same_image(preset):
    image = tiny_image(24, 40, seed=3)
    pipe = tiny_pipeline()
    reference = variant(pipe, ReferenceCostPipeline)

    def restore(p, **kwargs):
        generator = torch.Generator().manual_seed(0)
        return p(
            image,
            prompt="a photo",
            num_inference_steps=10,
            preset=preset,
            generator=generator,
            output_type="pt",
            **kwargs,
        ).images

    expected = restore(pipe)
    assert {type(p).__name__ for p in pipe.vae.attn_processors.values()} == {"DecoderAttnProcessor"}
    result = restore(reference, unet_batch_size=2)
    # The reference's VAE attention is diffusers' default SDPA (the written-out one is this project's).
    assert {type(p).__name__ for p in pipe.vae.attn_processors.values()} == {"AttnProcessor2_0"}
    # Measured: max |diff| < 1e-5 (float32 reassociation of the batched decode, the split UNet calls and the
    # decoder's attention).
    assert (result - expected).abs().max() < 1e-4
