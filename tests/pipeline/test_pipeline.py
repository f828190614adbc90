from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch

from ldrps_pipeline import (
    LDRPSPipeline,
    LDRPSPipelineOutput,
    RecurrentPosteriorScheduler,
    alignment_ldrps,
    guidance_ldrps,
    pipeline_ldrps,
)
from tiny_components import record_unet_batches, tiny_captioner, tiny_components, tiny_image, tiny_pipeline

STEPS = 8  # pass 0: 8 steps; each recurrence (strength 0.5): 4 steps


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def run(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    kwargs.setdefault("prompt", "a photo")
    return pipe(image, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_output_types_and_shapes(pipe):
    image = tiny_image(16, 16)
    pt = run(pipe, image)
    assert isinstance(pt, LDRPSPipelineOutput) and pt.prompts == ["a photo"]
    assert pt.images.shape == (1, 3, 16, 16) and 0 <= pt.images.min() and pt.images.max() <= 1
    np_out = run(pipe, image, output_type="np").images
    assert np_out.shape == (1, 16, 16, 3) and np.allclose(np_out, pt.images.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = run(pipe, image, output_type="pil").images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    latent = run(pipe, image, output_type="latent").images
    assert latent.shape == (1, 4, 8, 8)
    images, prompts = run(pipe, image, return_dict=False)
    assert torch.equal(images, pt.images) and prompts == ["a photo"]


def test_inputs_of_every_kind_give_the_same_result(pipe):
    image = tiny_image(12, 20)
    reference = run(pipe, image).images
    as_uint8 = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_pil = run(pipe, PIL.Image.fromarray(as_uint8)).images
    from_np = run(pipe, as_uint8).images
    from_chw = run(pipe, torch.from_numpy(as_uint8).permute(2, 0, 1).float() / 255).images
    assert torch.equal(from_pil, from_np) and torch.equal(from_np, from_chw)
    assert torch.allclose(from_pil, reference, atol=0.05)  # differ only by 8-bit quantisation of the input


def test_odd_size_comes_back_at_its_size(pipe):
    out = run(pipe, tiny_image(45, 67), output_type="np").images
    assert out.shape == (1, 45, 67, 3)
    out = run(pipe, tiny_image(5, 3), output_type="pil").images
    assert out[0].size == (3, 5)


def test_same_seed_same_output_and_other_seed_differs(pipe):
    image = tiny_image(16, 16)
    a, b, c = (
        run(pipe, image, seed=1).images,
        run(pipe, image, seed=1).images,
        run(pipe, image, seed=2).images,
    )
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_batch_equals_separate_runs(pipe):
    images = torch.cat([tiny_image(16, 16, seed=0), tiny_image(16, 16, seed=1)])
    generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    batch = pipe(images, prompt=["a cat", "a dog"], num_inference_steps=STEPS, generator=generators, output_type="pt")
    first = run(pipe, images[:1], seed=5, prompt="a cat").images
    second = run(pipe, images[1:], seed=6, prompt="a dog").images
    assert batch.prompts == ["a cat", "a dog"]
    assert torch.allclose(batch.images[:1], first, atol=1e-4)
    assert torch.allclose(batch.images[1:], second, atol=1e-4)


def test_state_is_reset_between_images(pipe):
    b_alone = run(pipe, tiny_image(16, 16, seed=1), seed=3).images
    run(pipe, tiny_image(16, 16, seed=0), seed=4)
    b_after_a = run(pipe, tiny_image(16, 16, seed=1), seed=3).images
    assert torch.equal(b_alone, b_after_a)


class TrainerSpy:
    """Records the AlignmentTrainer instances the pipeline creates."""

    def __init__(self, monkeypatch):
        self.trainers = []
        original = pipeline_ldrps.AlignmentTrainer

        def make(*args, **kwargs):
            trainer = original(*args, **kwargs)
            self.trainers.append(trainer)
            return trainer

        monkeypatch.setattr(pipeline_ldrps, "AlignmentTrainer", make)


def restored_and_aligner(pipe, monkeypatch, posterior_scale, seed):
    pipe.posterior_scheduler = RecurrentPosteriorScheduler(posterior_scale=posterior_scale, recurrences=1)
    spy = TrainerSpy(monkeypatch)
    x = run(pipe, tiny_image(16, 16, seed=2), seed=seed, num_inference_steps=20).images
    return x, spy.trainers[-1].aligner


@pytest.mark.parametrize("seed", [0, 1])
def test_guidance_lowers_the_mismatch(monkeypatch, seed):
    # A tiny random prior needs a large step to move its samples: the scale is far above the paper's.
    pipe = tiny_pipeline()
    y = tiny_image(16, 16, seed=2)
    guided, aligner = restored_and_aligner(pipe, monkeypatch, 4e6, seed)
    # Without guidance the alignment module is not trained; judge both results with the trained one.
    unguided, _ = restored_and_aligner(pipe, monkeypatch, 0.0, seed)
    with torch.no_grad():
        assert torch.mean((aligner(guided) - y) ** 2) < 0.7 * torch.mean((aligner(unguided) - y) ** 2)


def test_no_guidance_for_t_at_or_above_700_and_passes(monkeypatch):
    pipe = tiny_pipeline()
    stepped, guided = [], []
    real_step, real_loss = pipe.posterior_scheduler.step, guidance_ldrps.posterior_loss

    def step(model_output, timestep, sample, scheduler):
        stepped.append(timestep)
        return real_step(model_output, timestep, sample, scheduler)

    def loss(*args, **kwargs):
        guided.append(stepped[-1])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pipe.posterior_scheduler, "step", step)
    monkeypatch.setattr(guidance_ldrps, "posterior_loss", loss)
    seen = []
    run(
        pipe,
        tiny_image(16, 16),
        num_inference_steps=10,
        recurrences=2,
        callback_on_step_end=lambda p, i, t, k: seen.append(t) or {},
    )
    assert seen == stepped and len(seen) == 10 + 2 * 5  # number of passes = 1 + recurrences
    assert seen[0] == 901 and seen[9] == 1 and seen[10] == 401 and seen[15] == 401
    assert guided == [t for t in stepped if t < 700] and len(guided) == 7 + 5 + 5


def test_step_count_comes_from_the_posterior_scheduler_unless_given_and_fast_preset():
    pipe = tiny_pipeline()
    pipe.posterior_scheduler = pipe.posterior_scheduler.with_preset("default", num_inference_steps=6, recurrences=1)
    shapes = []

    def record(p, i, t, kwargs):
        shapes.append(kwargs["latents"].shape)
        return {}

    pipe(tiny_image(16, 16), prompt="a photo", output_type="pt", callback_on_step_end=record)
    assert len(shapes) == 6 + 3
    shapes.clear()
    pipe(tiny_image(16, 16), prompt="a photo", num_inference_steps=4, output_type="pt", callback_on_step_end=record)
    assert len(shapes) == 4 + 2
    shapes.clear()
    # "fast": 50 steps + one recurrence of 25, one sample.
    pipe(tiny_image(16, 16), prompt="a photo", preset="fast", output_type="pt", callback_on_step_end=record)
    assert len(shapes) == 50 + 25 and set(shapes) == {(1, 4, 8, 8)}


def test_callback_every_step_can_edit_latents_and_interrupt(pipe):
    calls = []

    def callback(pipeline, i, t, kwargs):
        calls.append((i, t, kwargs["latents"].shape))
        if i == 3:
            pipeline._interrupt = True
        return {"latents": kwargs["latents"]}

    run(pipe, tiny_image(16, 16), callback_on_step_end=callback)
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert calls[0][2] == (2, 4, 8, 8)  # both samples of the one image
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(
            pipe,
            tiny_image(16, 16),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["noise"],
        )


def test_models_are_frozen_and_collect_no_gradients(pipe):
    run(pipe, tiny_image(16, 16))
    for name in ("vae", "unet", "text_encoder", "perceptual"):
        for p in getattr(pipe, name).parameters():
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is None for p in pipe.aligner.parameters())


def test_captioner_writes_the_prompt_and_a_given_prompt_skips_it(tmp_path):
    model, processor = tiny_captioner(str(tmp_path))
    pipe = tiny_pipeline(captioner=model, captioner_processor=processor)
    calls = []
    original_generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return original_generate(*args, **kwargs)

    model.generate = counting_generate
    captioned = pipe(tiny_image(16, 16), num_inference_steps=4, recurrences=0, output_type="pt")
    assert len(calls) == 1 and captioned.prompts[0].startswith("cat")
    given = pipe(tiny_image(16, 16), prompt="a dog", num_inference_steps=4, recurrences=0)
    assert len(calls) == 1 and given.prompts == ["a dog"]
    no_caption = pipe(tiny_image(16, 16), num_inference_steps=4, recurrences=0, preset="denoise")
    assert len(calls) == 1 and no_caption.prompts == [""]


def test_the_caption_settings_of_the_config_reach_the_captioner_and_are_checked(tmp_path):
    model, processor = tiny_captioner(str(tmp_path))  # BLIP: it says "cat" at every token, and takes no instruction
    short = tiny_pipeline(captioner=model, captioner_processor=processor, caption_max_new_tokens=2)
    long = tiny_pipeline(captioner=model, captioner_processor=processor, caption_max_new_tokens=6)
    call = {"num_inference_steps": 2, "recurrences": 0, "output_type": "pt"}
    assert len(short(tiny_image(16, 16), **call).prompts[0].split()) < len(
        long(tiny_image(16, 16), **call).prompts[0].split()
    )
    asking = tiny_pipeline(captioner=model, captioner_processor=processor, caption_instruction="What is it?")
    with pytest.raises(ValueError, match="captions the image alone and takes no instruction"):
        asking(tiny_image(16, 16), **call)
    with pytest.raises(ValueError, match="caption_max_new_tokens must be a positive integer"):
        tiny_pipeline(caption_max_new_tokens=0)
    with pytest.raises(ValueError, match="non-empty string"):
        tiny_pipeline(caption_instruction="  ")


def test_no_prompt_no_captioner_warns_once(caplog):
    from diffusers.utils import logging

    pipe = tiny_pipeline()
    logging.enable_propagation()
    try:
        # Once per pipeline: not per image, not per call.
        for _ in range(2):
            out = pipe(torch.cat([tiny_image(8, 8)] * 2), num_inference_steps=2, recurrences=0, output_type="pt")
    finally:
        logging.disable_propagation()
    assert out.prompts == ["", ""]
    assert sum("empty prompt" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({}, True),  # default: guidance perceptual weight 2e-3 (f's perceptual weight is 0)
        ({"perceptual_weight": 0.0, "aligner_loss_weights": (1.0, 0.1, 0.1)}, True),  # f's perceptual term alone
        ({"perceptual_weight": 0.0}, False),
    ],
)
def test_missing_perceptual_component_is_reported_when_a_perceptual_weight_is_set(caplog, overrides, warned):
    from diffusers.utils import logging

    pipe = LDRPSPipeline(**tiny_components(perceptual=False))
    pipe.posterior_scheduler = RecurrentPosteriorScheduler(**overrides)
    logging.enable_propagation()
    try:
        # Twice: the warning comes once per pipeline, not at every image.
        for _ in range(2):
            pipe(tiny_image(8, 8), prompt="", num_inference_steps=2, recurrences=0, output_type="pt")
    finally:
        logging.disable_propagation()
    messages = [r.getMessage() for r in caplog.records if "No `perceptual` component" in r.getMessage()]
    assert len(messages) == (1 if warned else 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": -3}, "num_inference_steps"),
        ({"num_inference_steps": 2.0}, "num_inference_steps"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"recurrences": -1}, "recurrences"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"preset": "deblur"}, "preset"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"strength": True}, "strength"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"negative_prompt": ["", ""]}, "negative_prompt has 2 entries"),
        ({"negative_prompt": 3}, "negative_prompt must be a string"),
        ({"generator": [torch.Generator(), torch.Generator()]}, "generator"),
        ({"callback_on_step_end_tensor_inputs": "latents"}, "list of names"),
    ],
)
def test_bad_arguments_raise_clear_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(tiny_image(8, 8), **{"num_inference_steps": 2, **kwargs})


def test_a_bad_image_is_refused_before_any_model_runs(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "unet", None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(torch.rand(3, 8, 8) * 2 - 1, num_inference_steps=2)


def test_numpy_scalars_are_accepted_and_give_the_same_result(pipe):
    expected = run(pipe, tiny_image(16, 16), recurrences=1, strength=0.5, guidance_scale=8.0).images
    given = run(
        pipe,
        tiny_image(16, 16),
        num_inference_steps=np.int64(STEPS),
        recurrences=np.int64(1),
        strength=np.float32(0.5),
        guidance_scale=np.float64(8.0),
    ).images
    assert torch.equal(given, expected)


def test_negative_prompt_none_is_the_empty_negative_prompt(pipe):
    assert torch.equal(run(pipe, tiny_image(16, 16), negative_prompt=None).images, run(pipe, tiny_image(16, 16)).images)


def test_the_pass_plan_is_checked_before_the_captioner_runs(tmp_path):
    model, processor = tiny_captioner(str(tmp_path))
    pipe = tiny_pipeline(captioner=model, captioner_processor=processor)
    model.generate = lambda *args, **kwargs: pytest.fail("the captioner ran before the pass plan was checked")
    with pytest.raises(ValueError, match="leaves no step to re-run"):
        pipe(tiny_image(16, 16), num_inference_steps=1, recurrences=1, strength=0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(tiny_image(16, 16), num_inference_steps=2000)


def test_a_scheduler_assigned_later_becomes_ddim(caplog):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    from diffusers.utils import logging

    expected = run(tiny_pipeline(), tiny_image(16, 16)).images
    pipe = tiny_pipeline()
    logging.enable_propagation()
    try:
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    finally:
        logging.disable_propagation()
    assert type(pipe.scheduler) is DDIMScheduler and pipe.config.scheduler[1] == "DDIMScheduler"
    assert any("converted to a DDIMScheduler" in r.getMessage() for r in caplog.records)
    assert torch.equal(run(pipe, tiny_image(16, 16)).images, expected)


def test_diffusers_cfg_cutoff_callback_switches_cfg_off(monkeypatch):
    from diffusers.callbacks import SDCFGCutoffCallback

    pipe = tiny_pipeline()
    batches = record_unet_batches(pipe, monkeypatch)
    out = run(
        pipe,
        tiny_image(16, 16),
        recurrences=0,
        callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=3),
    )
    # Two samples x both CFG branches up to the cutoff's step, then the conditional branch alone.
    assert batches == [4] * 4 + [2] * (STEPS - 4)
    assert pipe.guidance_scale == 0.0 and torch.isfinite(out.images).all()


def test_guidance_off_trains_no_alignment_state(monkeypatch):
    from ldrps_pipeline.alignment_ldrps import AlignmentTrainer

    pipe = tiny_pipeline()
    pipe.posterior_scheduler = pipe.posterior_scheduler.with_preset("default", posterior_scale=0.0)
    calls = []
    monkeypatch.setattr(AlignmentTrainer, "train_step", lambda self, *a, **k: calls.append(1))
    image = pipe(tiny_image(16, 16), prompt="", num_inference_steps=10, output_type="pt").images
    # Without guidance f is never used, so it is not trained; the prior's sample is still made.
    assert calls == [] and torch.isfinite(image).all()


@torch.no_grad()
def test_decode_applies_the_vae_scaling_and_shift_factors():
    from diffusers import AutoencoderKL

    components = tiny_components()
    vae = AutoencoderKL.from_config(components["vae"].config, shift_factor=0.1)
    vae.load_state_dict(components["vae"].state_dict())
    assert vae.config.shift_factor == 0.1
    pipe = LDRPSPipeline(**{**components, "vae": vae})
    latents = torch.randn(1, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    side = 4 * pipe.vae_scale_factor
    expected = (vae.decode(latents / vae.config.scaling_factor + 0.1).sample + 1) / 2
    assert torch.allclose(pipe.decode(latents, side, side - 3), expected[..., : side - 3], atol=1e-6)


def test_out_of_memory_in_the_loop_names_what_needs_less_memory(monkeypatch):
    pipe = tiny_pipeline()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(pipe, "decode", out_of_memory)
    image = tiny_image()
    with pytest.raises(torch.OutOfMemoryError) as raised:
        pipe(image, num_inference_steps=4, recurrences=0)
    message = str(raised.value)
    assert message.startswith("LD-RPS ran out of device memory restoring 1 image(s) of 16x16.")
    for option in ("enable_tiling()", "enable_gradient_checkpointing()", "unet_batch_size=1", 'preset="fast"'):
        assert option in message
    # The original error is kept: in the message and as the cause.
    assert "Tried to allocate 2.00 GiB (simulated)" in message
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)

    # Options already in use are not offered again.
    pipe.vae.enable_tiling()
    pipe.vae.enable_gradient_checkpointing()
    one_sample = pipe.posterior_scheduler.with_preset("default", num_samples=1)
    pipe.posterior_scheduler = one_sample
    with pytest.raises(torch.OutOfMemoryError) as raised:
        pipe(image, num_inference_steps=4, recurrences=0, unet_batch_size=1)
    assert "What needs less memory: a smaller image." in str(raised.value)


def profiled_ranges(pipe, **kwargs):
    """How many times a profiled restoration entered each of the pipeline's profiler ranges."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run(pipe, tiny_image(16, 16), **kwargs)
    counts = Counter(event.name for event in profile.events())
    return {phase: counts[name] for phase, name in pipeline_ldrps.PROFILER_RANGES.items()}


def test_a_profiled_restoration_reports_every_range_per_step_decode_and_guided_step():
    pipe = tiny_pipeline()
    # 10 steps (901, 801, ..., 1: 7 below the gate of 700) and one recurrence of 5 (401, ..., 1), two samples.
    counts = profiled_ranges(pipe, num_inference_steps=10, recurrences=1)
    steps, guided = 10 + 5, 7 + 5
    assert guided == sum(
        pipe.posterior_scheduler.guidance_enabled(t) for p in pipe.posterior_scheduler.passes for t in p
    )
    assert counts == {
        "step": steps,
        "unet": steps,  # one range around the UNet call(s) of a step
        "decode": 2 * steps + 1,  # both samples at every step, then the result
        "alignment_training": steps,
        "guidance_loss": guided,
        "guidance_backward": guided,
    }
    # Without posterior guidance nothing is decoded before the result, nor trained.
    pipe.posterior_scheduler = RecurrentPosteriorScheduler(posterior_scale=0.0)
    counts = profiled_ranges(pipe, num_inference_steps=10, recurrences=1, unet_batch_size=1)
    assert counts == {
        "step": steps,
        "unet": steps,
        "decode": 1,
        "alignment_training": 0,
        "guidance_loss": 0,
        "guidance_backward": 0,
    }


@pytest.mark.parametrize(("warmup", "trained"), [(0, 10 + 5), (20, 3 + (20 - 3) + 6 + 5)])
def test_f_has_taken_its_warm_up_steps_when_the_guidance_first_uses_it(monkeypatch, warmup, trained):
    # 10 steps (901 ... 1): 3 at or above the gate of 700, 7 below it; the recurrence's 5 are all below it.
    pipe = tiny_pipeline()
    pipe.posterior_scheduler = RecurrentPosteriorScheduler(aligner_warmup_steps=warmup)
    guided_at_step = []
    real_train_step = alignment_ldrps.AlignmentTrainer.train_step

    def train_step(self, estimates, degraded, cap_perceptual):
        guided_at_step.append(cap_perceptual)
        return real_train_step(self, estimates, degraded, cap_perceptual)

    monkeypatch.setattr(alignment_ldrps.AlignmentTrainer, "train_step", train_step)
    run(pipe, tiny_image(16, 16), num_inference_steps=10, recurrences=1)
    assert len(guided_at_step) == trained and guided_at_step[:3] == [False] * 3 and all(guided_at_step[3:])


def test_exposure_tolerance_reaches_the_guidance():
    # The exposure term alone at every guided step; a tolerance of 0.5 (a band covering [0, 1]) leaves it nothing
    # to pull, so the result is that of no exposure term, which the paper's tolerance 0 changes.
    pipe = tiny_pipeline()
    exposure_only = {"mse_weight": 0.0, "perceptual_weight": 0.0, "exposure_patch_size": 32, "color_weight": 0.0}

    def restored(**fields):
        pipe.posterior_scheduler = RecurrentPosteriorScheduler(**exposure_only, **fields)
        return run(pipe, tiny_image(16, 16), operator="identity", recurrences=0).images

    none = restored(exposure_weight=0.0)
    assert torch.equal(restored(exposure_weight=100.0, exposure_tolerance=0.5), none)
    assert (restored(exposure_weight=100.0, exposure_tolerance=0.0) - none).abs().max() > 1e-3
    # An input gate of 0.5 passes no input (no mean is 0.5 or more from the level 0.5 but a flat black or white one).
    assert torch.equal(restored(exposure_weight=100.0, exposure_input_tolerance=0.5), none)
