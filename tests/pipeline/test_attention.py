"""The VAE decoder's attention processor and the pipeline's switching of attention processors (xformers included)."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from ldrps_pipeline import DecoderAttnProcessor, LDRPSPipeline
from tiny_components import restore_tiny, tiny_image, tiny_pipeline


@pytest.fixture(scope="module")
def reference():
    image = tiny_image(24, 40, seed=2)
    return image, restore_tiny(tiny_pipeline(), image)


def decode_with(processor, latents, dtype):
    """The tiny VAE's decode of ``latents`` with ``processor`` in its attention, and the gradient of a loss on it."""
    vae = tiny_pipeline().vae.to(dtype)
    vae.set_attn_processor(processor)
    latents = latents.to(dtype).requires_grad_(True)
    image = vae.decode(latents).sample
    (gradient,) = torch.autograd.grad(image.float().square().sum(), latents)
    return image.float(), gradient.float()


def test_written_out_decoder_attention_matches_sdpa_in_value_and_gradient():
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    expected = decode_with(AttnProcessor2_0(), latents, torch.float32)
    # float32: measured max |diff| 1.4e-6 (image) and 5.7e-6 (gradient, entries up to about 10).
    for result, reference in zip(decode_with(DecoderAttnProcessor(), latents, torch.float32), expected, strict=True):
        assert torch.allclose(result, reference, atol=3e-5)
    # bfloat16: as close to float32 as SDPA in bfloat16 is (measured 0.026 vs 0.025 image, 0.13 vs 0.12 gradient).
    sdpa = decode_with(AttnProcessor2_0(), latents, torch.bfloat16)
    written_out = decode_with(DecoderAttnProcessor(), latents, torch.bfloat16)
    for ours, theirs, reference in zip(written_out, sdpa, expected, strict=True):
        assert (ours - reference).abs().max() <= 1.5 * (theirs - reference).abs().max() + 1e-3
    # Beyond max_tokens (here 96 positions) it is SDPA itself: the same numbers.
    fallback = decode_with(DecoderAttnProcessor(max_tokens=95), latents, torch.float32)
    assert all(torch.equal(result, reference) for result, reference in zip(fallback, expected, strict=True))


def test_the_vae_gets_the_decoder_attention_unless_its_processors_are_your_own(reference, fresh_dynamo):
    image, _ = reference
    pipe = tiny_pipeline()
    restore_tiny(pipe, image, num_inference_steps=2)
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {DecoderAttnProcessor}
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    # enable_torch_compile installs it before compiling (the processors are traced with the decoder).
    compiled = tiny_pipeline()
    compiled.enable_torch_compile(backend="eager")
    assert {type(p) for p in compiled.vae.attn_processors.values()} == {DecoderAttnProcessor}
    custom = tiny_pipeline()
    custom.vae.set_attn_processor(AttnProcessorWithAScale())
    restore_tiny(custom, image, num_inference_steps=2)
    assert {type(p) for p in custom.vae.attn_processors.values()} == {AttnProcessorWithAScale}


class AttnProcessorWithAScale(AttnProcessor2_0):
    """A user's own attention processor (a subclass, so not diffusers' default type)."""


def test_switching_xformers_off_keeps_sdpa_and_the_result(reference):
    image, expected = reference
    pipe = tiny_pipeline()
    pipe.disable_xformers_memory_efficient_attention()
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert torch.equal(restore_tiny(pipe, image), expected)


class SdpaInTheVae(LDRPSPipeline):
    vae_attention_processor = AttnProcessor2_0


def test_a_subclass_chooses_the_vae_attention_and_the_pipeline_takes_its_own_back(reference):
    image, expected = reference
    pipe = tiny_pipeline()
    restore_tiny(pipe, image, num_inference_steps=2)
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {DecoderAttnProcessor}
    sdpa = SdpaInTheVae(**pipe.components)
    sdpa.set_progress_bar_config(disable=True)
    restore_tiny(sdpa, image, num_inference_steps=2)
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {AttnProcessor2_0}
    assert torch.equal(restore_tiny(pipe, image), expected)
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {DecoderAttnProcessor}
