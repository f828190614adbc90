"""Speed and memory options give the same restoration as the plain configuration (CPU checks).

Tolerances are stated beside each assertion with what was measured on CPU (tiny components).
"""

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging

from ldrps_pipeline import DecoderAttnProcessor, pipeline_ldrps
from tiny_components import record_unet_batches, tiny_image, tiny_pipeline


def restore(pipe, image, **kwargs):
    generator = torch.Generator().manual_seed(0)
    kwargs.setdefault("num_inference_steps", 10)
    return pipe(image, prompt="a photo", generator=generator, output_type="pt", **kwargs).images


@pytest.fixture(scope="module")
def reference():
    image = tiny_image(24, 40, seed=2)
    return image, restore(tiny_pipeline(), image)


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_per_sample_unet_calls_equal_one_batched_call(reference, rows):
    image, expected = reference
    # Measured: max |diff| < 1e-6 (float32 reassociation only).
    assert torch.allclose(restore(tiny_pipeline(), image, unet_batch_size=rows), expected, atol=1e-5)


def test_bfloat16_weights_match_float32(reference):
    image, expected = reference
    pipe = tiny_pipeline().to(dtype=torch.bfloat16)
    result = restore(pipe, image)
    # Measured on CPU: max |diff| 0.015, mean 0.003 after 15 guided steps (bf16 UNet/VAE, fp32 losses and clip).
    assert result.dtype == torch.float32
    assert (result - expected).abs().max() < 0.05 and (result - expected).abs().mean() < 0.01


def test_decoder_gradient_checkpointing_changes_nothing(reference):
    image, expected = reference
    pipe = tiny_pipeline()
    pipe.vae.enable_gradient_checkpointing()
    assert torch.allclose(restore(pipe, image), expected, atol=1e-6)


def test_vae_tiling(reference):
    image, expected = reference
    pipe = tiny_pipeline()
    pipe.vae.enable_tiling()
    # Within one tile (the tiny VAE's tile is 16 px) tiling is not used: identical result.
    small = tiny_image(16, 16)
    assert torch.equal(restore(pipe, small), restore(tiny_pipeline(), small))
    # Over several tiles the tiled decoder (and its gradient) differs only by the tile blending. Measured:
    # mean |diff| 0.03 on a 40x40 image, with 8-latent tiles, the worst case for seams in a random tiny VAE.
    result = restore(pipe, image)
    assert torch.isfinite(result).all() and (result - expected).abs().mean() < 0.06


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
    restore(pipe, image, num_inference_steps=2)
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {DecoderAttnProcessor}
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    # enable_torch_compile installs it before compiling (the processors are traced with the decoder).
    compiled = tiny_pipeline()
    compiled.enable_torch_compile(backend="eager")
    assert {type(p) for p in compiled.vae.attn_processors.values()} == {DecoderAttnProcessor}
    custom = tiny_pipeline()
    custom.vae.set_attn_processor(AttnProcessorWithAScale())
    restore(custom, image, num_inference_steps=2)
    assert {type(p) for p in custom.vae.attn_processors.values()} == {AttnProcessorWithAScale}


def test_bad_unet_batch_size_is_refused():
    with pytest.raises(ValueError, match="unet_batch_size"):
        restore(tiny_pipeline(), tiny_image(8, 8), unet_batch_size=0)


def test_torch_compile_gives_the_same_result(reference, fresh_dynamo):
    image, expected = reference
    pipe = tiny_pipeline()
    # Dynamo's "eager" backend captures the UNet and decoder graphs (forward and the guidance backward)
    # exactly as inductor would get them, without code generation: seconds instead of the minutes of C++
    # compilation that inductor needs on this CPU (measured: 80-140 s). tests/test_gpu.py runs inductor.
    pipe.enable_torch_compile(backend="eager")
    assert pipe.unet._compiled_call_impl is not None and pipe.vae.decoder._compiled_call_impl is not None
    # The small networks stay eager unless asked for (compiled, they were slower on an H200).
    trainer = pipe.new_alignment_state(torch.Generator().manual_seed(0), pipe.posterior_scheduler, torch.device("cpu"))
    assert trainer.aligner._compiled_call_impl is None and pipe.perceptual._compiled_call_impl is None
    # Measured: max |diff| < 1e-6 (float32 reassociation only).
    assert torch.allclose(restore(pipe, image), expected, atol=1e-5)
    everything = tiny_pipeline()
    everything.enable_torch_compile(small_networks=True, backend="eager")
    assert everything.perceptual._compiled_call_impl is not None
    trainer = everything.new_alignment_state(
        torch.Generator().manual_seed(0), everything.posterior_scheduler, torch.device("cpu")
    )
    assert trainer.aligner._compiled_call_impl is not None and trainer.f_discriminator._compiled_call_impl is not None
    assert torch.allclose(restore(everything, image), expected, atol=1e-5)
    # Compiled in place: the weights keep their names, so saving is unchanged.
    assert set(pipe.unet.state_dict()) == set(tiny_pipeline().unet.state_dict())
    # A second image size compiles anew (static shapes by default) and still restores like eager.
    small = tiny_image(16, 24, seed=3)
    assert torch.allclose(restore(pipe, small), restore(tiny_pipeline(), small), atol=1e-5)


def test_torch_compile_leaves_a_bfloat16_cpu_decoder_uncompiled(fresh_dynamo, caplog):
    # Measured with torch 2.13: inductor's gradient through the bf16 decoder's up-blocks on the CPU is
    # all zeros (aot_eager gives the right one), which would switch the guidance off without a word
    # (the cause, in inductor's C++ backend, is traced in examples/inductor_bf16_grad_repro.py).
    pipe = tiny_pipeline().to(dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        logging.enable_propagation()
        try:
            pipe.enable_torch_compile()
        finally:
            logging.disable_propagation()
    assert pipe.vae.decoder._compiled_call_impl is None and pipe.unet._compiled_call_impl is not None
    assert any("VAE decoder is left uncompiled" in r.getMessage() for r in caplog.records)
    # float32, or another backend, compiles the decoder as usual.
    float32 = tiny_pipeline()
    float32.enable_torch_compile()
    assert float32.vae.decoder._compiled_call_impl is not None
    eager_backend = tiny_pipeline().to(dtype=torch.bfloat16)
    eager_backend.enable_torch_compile(backend="eager")
    assert eager_backend.vae.decoder._compiled_call_impl is not None


def test_torch_compile_does_not_recompile_for_new_timesteps_or_fresh_alignment_networks(fresh_dynamo):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    pipe = tiny_pipeline()
    pipe.enable_torch_compile(small_networks=True, backend=counting_backend)
    image = tiny_image(16, 16, seed=4)
    restore(pipe, image, num_inference_steps=4)
    compiled = len(graphs)
    assert compiled > 0
    # Other timesteps and a fresh f and discriminators, the same shapes: nothing new to compile (an int
    # timestep recompiled at every step, seen on an H200 as dynamo's recompile limit and an eager UNet).
    restore(pipe, image, num_inference_steps=7)
    assert len(graphs) == compiled


def test_every_decode_of_a_restoration_has_one_row_per_image(monkeypatch):
    # One decoder shape for the whole restoration (the guided and unguided steps, both samples): a compiled
    # decoder builds a graph per grad mode only, not one per batch size as well.
    pipe = tiny_pipeline()
    rows = []
    decode = pipe.decode

    def recording_decode(latents, *args):
        rows.append(latents.shape[0])
        return decode(latents, *args)

    monkeypatch.setattr(pipe, "decode", recording_decode)
    restore(pipe, torch.cat([tiny_image(16, 16, seed=1), tiny_image(16, 16, seed=2)]), recurrences=0)
    guided = sum(pipe.posterior_scheduler.guidance_enabled(t) for t in pipe.posterior_scheduler.passes[0])
    assert guided and set(rows) == {2}
    assert len(rows) == 2 * 10 + 1  # two samples at every step, then the result


def test_equal_prompt_and_negative_prompt_run_one_cfg_branch(monkeypatch):
    image = tiny_image(16, 16, seed=1)
    pipe = tiny_pipeline()
    rows = record_unet_batches(pipe, monkeypatch)
    same = restore(pipe, image, negative_prompt="a photo")
    # 2 samples, the CFG pair collapsed: uncond + s * (cond - uncond) = cond when both embeddings are equal.
    assert set(rows) == {2}
    rows.clear()
    single = restore(pipe, image, negative_prompt="a photo", guidance_scale=1.0)
    assert set(rows) == {2} and torch.equal(same, single)
    rows.clear()
    restore(pipe, image, negative_prompt="")
    assert set(rows) == {4}


def test_xformers_switches_on_at_the_first_cuda_call_unless_chosen_explicitly(monkeypatch, fresh_dynamo):
    # xformers cannot run here: diffusers' switch is replaced by a recorder (the CUDA run is in test_gpu.py).
    applied = []
    monkeypatch.setattr(
        DiffusionPipeline,
        "set_use_memory_efficient_attention_xformers",
        lambda self, valid, attention_op=None: applied.append(valid),
    )
    monkeypatch.setattr(pipeline_ldrps, "is_xformers_available", lambda: True)
    pipe = tiny_pipeline()
    assert pipe.xformers_attention is None
    pipe._use_xformers_if_installed(torch.device("cpu"))
    assert applied == []
    pipe._use_xformers_if_installed(torch.device("cuda"))
    pipe._use_xformers_if_installed(torch.device("cuda"))
    assert applied == [True] and pipe.xformers_attention is True
    # Switched off before the first call: the automatic switch-on does not override the user's choice.
    chosen = tiny_pipeline()
    chosen.disable_xformers_memory_efficient_attention()
    chosen._use_xformers_if_installed(torch.device("cuda"))
    assert applied == [True, False] and chosen.xformers_attention is False
    # enable_torch_compile keeps SDPA unless xformers was switched on explicitly, without touching the processors.
    compiled = tiny_pipeline()
    compiled.enable_torch_compile(backend="eager")
    compiled._use_xformers_if_installed(torch.device("cuda"))
    assert compiled.xformers_attention is False and applied == [True, False]
    pipe.enable_torch_compile(backend="eager")
    assert pipe.xformers_attention is True and applied == [True, False]
    # The user's own attention processors are never replaced.
    custom = tiny_pipeline()
    custom.unet.set_attn_processor(AttnProcessorWithAScale())
    custom._use_xformers_if_installed(torch.device("cuda"))
    assert applied == [True, False] and custom.xformers_attention is None
    custom.enable_torch_compile(backend="eager")
    assert {type(p) for p in custom.unet.attn_processors.values()} == {AttnProcessorWithAScale}
    # Not installed: nothing happens.
    monkeypatch.setattr(pipeline_ldrps, "is_xformers_available", lambda: False)
    tiny_pipeline()._use_xformers_if_installed(torch.device("cuda"))
    assert applied == [True, False]


class AttnProcessorWithAScale(AttnProcessor2_0):
    """A user's own attention processor (a subclass, so not diffusers' default type)."""


def test_switching_xformers_off_keeps_sdpa_and_the_result(reference):
    image, expected = reference
    pipe = tiny_pipeline()
    pipe.disable_xformers_memory_efficient_attention()
    assert pipe.xformers_attention is False
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert torch.equal(restore(pipe, image), expected)


def test_an_installed_xformers_that_cannot_run_leaves_sdpa_with_a_warning(monkeypatch, caplog):
    applied = []

    def switch(self, valid, attention_op=None):
        applied.append(valid)
        if valid:
            raise RuntimeError("no kernels for this card")

    monkeypatch.setattr(DiffusionPipeline, "set_use_memory_efficient_attention_xformers", switch)
    monkeypatch.setattr(pipeline_ldrps, "is_xformers_available", lambda: True)
    pipe = tiny_pipeline()
    with caplog.at_level(logging.WARNING):
        logging.enable_propagation()
        try:
            pipe._use_xformers_if_installed(torch.device("cuda"))
            pipe._use_xformers_if_installed(torch.device("cuda"))
        finally:
            logging.disable_propagation()
    # Tried once, switched back off (SDPA), not tried again.
    assert applied == [True, False] and pipe.xformers_attention is False
    assert sum("cannot be used here" in r.getMessage() for r in caplog.records) == 1
