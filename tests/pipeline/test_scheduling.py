import pytest
import torch
from diffusers import DDIMScheduler

from ldrps_pipeline import PRESETS, RecurrentPosteriorScheduler
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG, as_ddim_scheduler, percentile_clip


def sd_ddim() -> DDIMScheduler:
    return DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG)


def test_paper_pass_plan():
    passes = RecurrentPosteriorScheduler().set_timesteps(450, sd_ddim(), recurrences=2, strength=0.5)
    assert len(passes) == 3
    assert passes[0][:2] == [899, 897] and passes[0][-1] == 1 and len(passes[0]) == 450
    for tail in passes[1:]:
        assert tail[0] == 449 and tail[-1] == 1 and len(tail) == 225


def test_recurrences_and_strength_default_to_config():
    scheduler = RecurrentPosteriorScheduler(recurrences=1, strength=0.2)
    passes = scheduler.set_timesteps(10, sd_ddim())
    assert [len(p) for p in passes] == [10, 2]


def test_strength_too_small_for_the_steps_is_refused():
    with pytest.raises(ValueError, match="leaves no step"):
        RecurrentPosteriorScheduler().set_timesteps(3, sd_ddim(), recurrences=1, strength=0.2)


def test_percentile_clip_hand_computed():
    # 200 values: |x| = 0.01 .. 2.00; the 0.995 quantile (linear) is 1.99005; nothing is divided.
    values = torch.linspace(0.01, 2.0, 200)
    signs = torch.where(torch.arange(200) % 2 == 0, 1.0, -1.0)
    x = (values * signs).view(1, 2, 10, 10)
    clipped = percentile_clip(x, 0.995, 1.0, 100.0)
    s = 0.01 + 0.995 * 199 * 0.01
    assert clipped.abs().max().item() == pytest.approx(s, abs=1e-5)
    untouched = x.abs() <= s
    assert torch.equal(clipped[untouched], x[untouched])
    assert torch.allclose(clipped[~untouched].abs(), torch.tensor(s), atol=1e-5)


def test_percentile_clip_threshold_bounds_and_per_sample():
    small = torch.full((1, 4, 2, 2), 0.5)  # quantile 0.5 < 1: threshold clamped up to 1, nothing changes
    large = torch.full((1, 4, 2, 2), 500.0)  # quantile 500 > 100: clipped to 100
    out = percentile_clip(torch.cat([small, large]), 0.995, 1.0, 100.0)
    assert torch.equal(out[0], small[0])
    assert torch.all(out[1] == 100.0)


def test_guidance_gates():
    scheduler = RecurrentPosteriorScheduler.from_preset("lowlight")
    assert not scheduler.guidance_enabled(700) and scheduler.guidance_enabled(699)
    assert scheduler.guidance_weights(100).exposure == 0.0
    late = scheduler.guidance_weights(99)
    assert late.exposure == 1e-2 and late.color == 1e-2 and late.mse == 1.0
    assert not RecurrentPosteriorScheduler(posterior_scale=0.0).guidance_enabled(10)


def test_guidance_plan_gives_each_steps_weights_below_the_gate_and_none_above():
    scheduler = RecurrentPosteriorScheduler.from_preset("lowlight")
    timesteps = [901, 700, 699, 100, 99, 1]
    plan = scheduler.guidance_plan(timesteps)
    assert plan[:2] == [None, None]
    assert plan[2:] == [scheduler.guidance_weights(t) for t in timesteps[2:]]
    assert plan[3].exposure == 0.0 and plan[4].exposure == 1e-2
    assert RecurrentPosteriorScheduler(posterior_scale=0.0).guidance_plan(timesteps) == [None] * len(timesteps)


def test_as_ddim_scheduler_keeps_a_ddim_scheduler_and_converts_another_with_its_config():
    from diffusers import EulerDiscreteScheduler

    ddim = sd_ddim()
    assert as_ddim_scheduler(ddim) is ddim and as_ddim_scheduler(None) is None
    converted = as_ddim_scheduler(EulerDiscreteScheduler.from_config(ddim.config, prediction_type="v_prediction"))
    assert type(converted) is DDIMScheduler and converted.config.prediction_type == "v_prediction"
    assert converted.config.timestep_spacing == ddim.config.timestep_spacing


def test_presets_reproduce_reference_settings_and_leave_original_alone():
    base = RecurrentPosteriorScheduler(clip_max=50.0)
    dehaze = base.with_preset("dehaze")
    assert dehaze.config.posterior_scale == 25000.0 and dehaze.config.recurrences == 1
    assert tuple(dehaze.config.aligner_loss_weights) == (0.2, 0.5, 0.2)
    assert dehaze.f_discriminator_lr("residual") == 1e-4 and dehaze.f_discriminator_lr("plain") == 2e-5
    assert dehaze.config.clip_max == 50.0  # fields a preset does not name keep their value
    assert base.config.posterior_scale == 40000.0
    assert set(PRESETS) == {"default", "lowlight", "dehaze", "denoise", "fast"}
    fast = base.with_preset("fast")
    assert (fast.config.num_inference_steps, fast.config.recurrences, fast.config.num_samples) == (50, 1, 1)
    assert fast.config.strength == 0.5 and base.config.num_inference_steps == 450
    with pytest.raises(ValueError, match="unknown preset"):
        base.with_preset("deblur")
    # The task presets' exposure terms are the reference's (no dead band) whatever the base; fast keeps the base's.
    banded = RecurrentPosteriorScheduler(exposure_tolerance=0.2, exposure_input_tolerance=0.3)
    for name, expected in (("lowlight", (0.0, 0.0)), ("dehaze", (0.0, 0.0)), ("fast", (0.2, 0.3))):
        config = banded.with_preset(name).config
        assert (config.exposure_tolerance, config.exposure_input_tolerance) == expected


def test_scale_is_defined_at_reference_size():
    scheduler = RecurrentPosteriorScheduler(posterior_scale=40000.0)
    assert scheduler.scale_for(512, 512) == 40000.0
    assert scheduler.scale_for(256, 512) == 20000.0


def test_step_is_ddim_with_clipped_x0():
    ddim = sd_ddim()
    scheduler = RecurrentPosteriorScheduler()
    scheduler.set_timesteps(10, ddim)
    g = torch.Generator().manual_seed(0)
    t = scheduler.passes[0][-1]
    # Small latents: the clip threshold stays at its floor of 1 and nothing is clipped.
    sample, eps = 0.2 * torch.randn(2, 4, 8, 8, generator=g), 0.01 * torch.randn(2, 4, 8, 8, generator=g)
    prev, x0 = scheduler.step(eps, t, sample, ddim)
    reference = ddim.step(eps, t, sample, eta=0.0)
    assert torch.allclose(prev, reference.prev_sample, atol=1e-6)
    assert torch.allclose(x0, reference.pred_original_sample, atol=1e-6)
    # Large latents: x0 is the percentile clip of DDIM's x0.
    big = 5 * torch.randn(2, 4, 8, 8, generator=g)
    _, x0 = scheduler.step(eps, t, big, ddim)
    unclipped = ddim.step(eps, t, big).pred_original_sample
    assert not torch.equal(x0, unclipped)
    assert torch.allclose(x0, percentile_clip(unclipped), atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_is_ddim_for_every_prediction_type(prediction_type):
    ddim = DDIMScheduler(**{**STABLE_DIFFUSION_DDIM_CONFIG, "prediction_type": prediction_type})
    scheduler = RecurrentPosteriorScheduler()
    scheduler.set_timesteps(10, ddim)
    g = torch.Generator().manual_seed(1)
    sample, output = 0.2 * torch.randn(2, 4, 8, 8, generator=g), 0.1 * torch.randn(2, 4, 8, 8, generator=g)
    for t in (scheduler.passes[0][0], scheduler.passes[0][5]):
        prev, x0 = scheduler.step(output, t, sample, ddim)
        reference = ddim.step(output, t, sample, eta=0.0)
        assert torch.allclose(x0, percentile_clip(reference.pred_original_sample), atol=1e-6)
        if torch.equal(x0, reference.pred_original_sample):  # nothing clipped: DDIM's step exactly
            assert torch.allclose(prev, reference.prev_sample, atol=1e-6)


def test_unknown_prediction_type_is_refused():
    ddim = DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG)
    ddim.register_to_config(prediction_type="flow")
    scheduler = RecurrentPosteriorScheduler()
    scheduler.set_timesteps(10, ddim)
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow'"):
        scheduler.step(torch.zeros(1, 4, 8, 8), scheduler.passes[0][0], torch.zeros(1, 4, 8, 8), ddim)


def test_renoise_is_the_img2img_forward_process():
    ddim = sd_ddim()
    g = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    alpha = ddim.alphas_cumprod[449]
    expected = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    assert torch.allclose(RecurrentPosteriorScheduler().renoise(latents, noise, 449, ddim), expected, atol=1e-6)


def test_save_and_load_config(tmp_path):
    scheduler = RecurrentPosteriorScheduler.from_preset("denoise", num_samples=3)
    scheduler.save_pretrained(tmp_path)
    loaded = RecurrentPosteriorScheduler.from_pretrained(tmp_path)
    assert loaded.config.num_samples == 3 and loaded.config.posterior_scale == 40000.0
    assert tuple(loaded.config.aligner_loss_weights) == (3.0, 0.002, 0.001)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_inference_steps", 0),
        ("recurrences", -1),
        ("strength", 1.5),
        ("num_samples", 0),
        ("guidance_start", -5),
        ("posterior_scale", float("nan")),
        ("mse_weight", -1.0),
        ("exposure_patch_size", 0),
        ("exposure_tolerance", -0.1),
        ("exposure_input_tolerance", float("inf")),
        ("aligner_warmup_steps", -1),
        ("aligner_warmup_steps", 2.5),
        ("aligner_loss_weights", (1.0, 0.1)),
        ("g_discriminator_lr", 0.0),
        ("clip_quantile", 1.5),
        ("clip_max", 0.5),
        ("use_caption", "yes"),
    ],
)
def test_out_of_range_config_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        RecurrentPosteriorScheduler(**{field: value})
    with pytest.raises(ValueError, match=f"{field} must be"):
        RecurrentPosteriorScheduler.from_preset("fast", **{field: value})


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match=r"unknown RecurrentPosteriorScheduler fields \['num_sample'\]"):
        RecurrentPosteriorScheduler.from_preset("fast", num_sample=1)


def test_the_default_warm_up_is_what_the_papers_schedule_gives_f_above_the_gate():
    # At the paper's 450 steps f has taken its 100 warm-up steps when the guidance opens: the warm-up adds none.
    posterior = RecurrentPosteriorScheduler()
    _, plans = posterior.plan_passes(450, sd_ddim(), None, None)
    assert sum(weights is None for weights in plans[0]) == posterior.config.aligner_warmup_steps == 100
    _, plans = posterior.plan_passes(100, sd_ddim(), None, None)
    assert sum(weights is None for weights in plans[0]) == 30  # a shorter schedule: 70 warm-up steps at the gate
