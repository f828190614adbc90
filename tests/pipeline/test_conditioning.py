"""The UNet's text conditioning (the rows of classifier-free guidance) and the step-end callbacks that may change it."""

import torch

from ldrps_pipeline.conditioning_ldrps import TextConditioning, run_step_end_callback


def embeddings(seed: int, images: int = 2) -> torch.Tensor:
    return torch.randn(images, 3, 4, generator=torch.Generator().manual_seed(seed))


def test_cfg_rows_are_uncond_then_cond_of_every_sample_and_collapse_when_they_are_equal():
    cond, uncond = embeddings(0), embeddings(1)
    text = TextConditioning.build(cond, uncond, num_samples=3, cfg=True)
    assert torch.equal(text.cfg_embeds, torch.cat([uncond.repeat_interleave(3, 0), cond.repeat_interleave(3, 0)]))
    # uncond + s * (cond - uncond) is cond when both are equal, and without CFG: the conditional rows alone.
    assert torch.equal(TextConditioning.build(cond, cond.clone(), 3, cfg=True).cfg_embeds, cond.repeat_interleave(3, 0))
    assert torch.equal(TextConditioning.build(cond, uncond, 3, cfg=False).cfg_embeds, cond.repeat_interleave(3, 0))
    assert torch.equal(TextConditioning.build(cond, None, 3, cfg=True).cfg_embeds, cond.repeat_interleave(3, 0))


class Pipe:
    """What a callback sees of a pipeline: its CFG scale."""

    def __init__(self, guidance_scale: float) -> None:
        self._guidance_scale = guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1


def test_the_callback_gets_the_named_tensors_and_its_replacements_are_used():
    pipe, latents = Pipe(8.0), torch.zeros(4, 4, 2, 2)
    text = TextConditioning.build(embeddings(0), embeddings(1), num_samples=2, cfg=True)
    seen = []

    def callback(p, step_index, timestep, kwargs):
        seen.append((p, step_index, timestep, sorted(kwargs)))
        return {"latents": kwargs["latents"] + 1}

    new_latents, new_text = run_step_end_callback(pipe, callback, ["latents"], 3, 701, latents, text)
    assert seen == [(pipe, 3, 701, ["latents"])]
    assert torch.equal(new_latents, latents + 1)
    assert new_text.cfg_embeds is text.cfg_embeds  # nothing to rebuild


def test_new_embeddings_or_cfg_switched_off_rebuild_the_rows():
    pipe, latents = Pipe(8.0), torch.zeros(4, 4, 2, 2)
    text = TextConditioning.build(embeddings(0), embeddings(1), num_samples=2, cfg=True)
    replaced = embeddings(2)
    _, new_text = run_step_end_callback(
        pipe, lambda p, i, t, k: {"prompt_embeds": replaced}, ["prompt_embeds"], 0, 1, latents, text
    )
    expected = TextConditioning.build(replaced, embeddings(1), 2, cfg=True).cfg_embeds
    assert torch.equal(new_text.cfg_embeds, expected) and torch.equal(new_text.prompt_embeds, replaced)

    def cutoff(p, i, t, k):
        p._guidance_scale = 0.0
        return {}

    _, without_cfg = run_step_end_callback(pipe, cutoff, ["latents"], 0, 1, latents, text)
    assert torch.equal(without_cfg.cfg_embeds, text.prompt_embeds.repeat_interleave(2, 0))
    # The negative embeddings are kept: CFG switched back on rebuilds both halves.
    pipe._guidance_scale = 8.0
    assert torch.equal(without_cfg.negative_prompt_embeds, text.negative_prompt_embeds)
