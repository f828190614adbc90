"""Every loading path, the remote-code ones in a fresh process (as a user would run them); the ``saved`` fixture
is in conftest.py."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from remote_code import PIPELINE_FILE, restore, run_fresh
from safetensors.torch import save_file
from tiny_captioners import tiny_blip2

from ldrps_pipeline import AlignmentModule, LDRPSPipeline, PerceptualFeatures, RecurrentPosteriorScheduler
from ldrps_pipeline.captioning_ldrps import caption_images
from ldrps_pipeline.hub import loading
from ldrps_pipeline.hub.loading import demo_model_path, load_pipeline, resolve_model
from tiny_components import STABLE_DIFFUSION_FAMILIES, tiny_components, tiny_image, tiny_pipeline, tiny_stable_diffusion


def test_save_and_from_pretrained_round_trip(saved):
    folder, reference = saved
    loaded = LDRPSPipeline.from_pretrained(folder)
    assert isinstance(loaded.aligner, AlignmentModule)
    assert isinstance(loaded.posterior_scheduler, RecurrentPosteriorScheduler)
    assert loaded.captioner is None
    assert torch.equal(restore(loaded), reference)


def test_custom_pipeline_file_in_a_fresh_process(saved, tmp_path):
    folder, reference = saved
    images, module = run_fresh(
        tmp_path,
        f"""
        import ldrps_pipeline  # the saved components name the package's classes
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, custom_pipeline={str(PIPELINE_FILE)!r},
                                                 trust_remote_code=True)
        """,
    )
    assert module.startswith("diffusers_modules")
    assert torch.allclose(images, reference, atol=1e-6)


def test_from_pipe_of_a_stable_diffusion_pipeline():
    components = tiny_components()
    sd = StableDiffusionPipeline(
        **{k: components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = LDRPSPipeline.from_pipe(sd, aligner=components["aligner"], posterior_scheduler=RecurrentPosteriorScheduler())
    assert pipe.unet is sd.unet and pipe.vae is sd.vae
    assert restore(pipe).shape == (1, 3, 12, 20)


def test_resolve_model_checks_local_paths_and_keeps_hub_ids(saved, tmp_path, monkeypatch):
    folder, _ = saved
    assert resolve_model("demo") == str(demo_model_path())
    assert resolve_model(str(folder)) == str(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty is not a diffusers pipeline folder"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="weights.bin is a file"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="model folder /nonexistent does not exist"):
        load_pipeline("/nonexistent")  # not a valid Hub id either
    monkeypatch.chdir(tmp_path)  # no local folder user/repo
    assert resolve_model("user/repo") == "user/repo"


def test_a_hub_repo_id_is_loaded_from_the_hub(saved, tmp_path, monkeypatch):
    folder, _ = saved
    monkeypatch.chdir(tmp_path)  # no local folder user/repo
    downloads, loads, loaded = [], [], object()

    def download(repo_id, filename, revision, token):
        downloads.append((repo_id, filename, revision, token))
        return str(folder / filename)

    def from_pretrained(model, **kwargs):
        loads.append((model, kwargs))
        return loaded

    monkeypatch.setattr(loading, "hf_hub_download", download)
    monkeypatch.setattr(LDRPSPipeline, "from_pretrained", from_pretrained)
    assert load_pipeline("user/repo", revision="v1", token="hf_x", variant="fp16", perceptual=None) is loaded
    assert downloads == [("user/repo", "model_index.json", "v1", "hf_x")]
    assert loads == [
        (
            "user/repo",
            {"dtype": torch.float32, "use_safetensors": True, "variant": "fp16", "revision": "v1", "token": "hf_x"},
        )
    ]


def test_pickle_weights_are_loaded_only_when_allowed(saved, tmp_path):
    _, reference = saved
    folder = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    assert list(folder.rglob("*.bin"))  # transformers writes the text encoder as safetensors all the same
    with pytest.raises(OSError, match=r"only safetensors weights are loaded.*--allow-pickle"):
        load_pipeline(str(folder))
    assert torch.equal(restore(load_pipeline(str(folder), allow_pickle=True)), reference)


@pytest.mark.parametrize("family", sorted(STABLE_DIFFUSION_FAMILIES))
def test_each_stable_diffusion_family_loads_as_ld_rps_with_its_prediction_type(family, tmp_path):
    sd = tiny_stable_diffusion(family)
    sd.save_pretrained(tmp_path / family)
    pipe = load_pipeline(str(tmp_path / family), perceptual="none")
    assert isinstance(pipe, LDRPSPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == sd.scheduler.config.prediction_type
    assert pipe.unet.config.use_linear_projection == sd.unet.config.use_linear_projection
    assert pipe.unet.config.upcast_attention == sd.unet.config.upcast_attention
    assert isinstance(pipe.aligner, AlignmentModule) and pipe.posterior_scheduler.config.num_inference_steps == 450
    images = restore(pipe)
    assert images.shape == (1, 3, 12, 20) and torch.isfinite(images).all()
    # The same restoration as LD-RPS built in memory on the SD pipeline with its defaults.
    assert torch.equal(images, restore(LDRPSPipeline.from_pipe(sd)))


def test_the_prediction_type_changes_the_restoration():
    epsilon, v = (LDRPSPipeline.from_pipe(tiny_stable_diffusion(f)) for f in ("sd2-base", "sd2-768"))
    v.unet = epsilon.unet  # the same weights: only the scheduler's prediction type differs
    assert not torch.allclose(restore(epsilon), restore(v))


def test_a_variant_is_loaded_when_named_and_its_absence_is_explained(tmp_path):
    sd = tiny_stable_diffusion("sd2-base")
    sd.save_pretrained(tmp_path / "sd", variant="fp16")
    with pytest.raises(OSError, match=r"--variant fp16"):
        load_pipeline(str(tmp_path / "sd"), perceptual="none")
    assert torch.equal(
        restore(load_pipeline(str(tmp_path / "sd"), variant="fp16", perceptual="none")),
        restore(LDRPSPipeline.from_pipe(sd)),
    )


def test_captioner_and_perceptual_sources_and_caption_settings(saved, tmp_path):
    folder, _ = saved  # a tiny LD-RPS pipeline with its own perceptual component, no captioner
    model, processor = tiny_blip2()
    model.save_pretrained(tmp_path / "captioner")
    processor.save_pretrained(tmp_path / "captioner")
    features = PerceptualFeatures()  # VGG16's widths, random weights, saved in torchvision's key layout
    save_file(
        {k: v for k, v in features.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg.safetensors"
    )

    own = load_pipeline(str(folder))  # "auto" keeps the model's own perceptual features
    assert isinstance(own.perceptual, PerceptualFeatures) and own.captioner is None
    pipe = load_pipeline(
        str(folder),
        captioner=str(tmp_path / "captioner"),
        perceptual=str(tmp_path / "vgg.safetensors"),
        caption_instruction="What is shown?",
        caption_max_new_tokens=3,
    )
    assert type(pipe.captioner) is type(model) and not any(p.requires_grad for p in pipe.captioner.parameters())
    assert pipe.config.captioner[1] == type(model).__name__
    for mine, loaded in zip(features.parameters(), pipe.perceptual.parameters(), strict=True):
        assert torch.equal(mine, loaded) and not loaded.requires_grad
    assert (pipe.config.caption_instruction, pipe.config.caption_max_new_tokens) == ("What is shown?", 3)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(tiny_image(16, 16), num_inference_steps=2, recurrences=0, output_type="pt")
    assert out.prompts == caption_images(
        model,
        processor,
        VaeImageProcessor.numpy_to_pil(tiny_image(16, 16).permute(0, 2, 3, 1).numpy()),
        "What is shown?",
        3,
    )
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = load_pipeline(str(tmp_path / "saved"), captioner="none", perceptual="none")
    assert reloaded.captioner is None and reloaded.perceptual is None
    assert reloaded.config.caption_instruction == "What is shown?"


def test_a_bad_perceptual_or_captioner_source_is_refused_before_the_model_loads(saved, tmp_path, monkeypatch):
    folder, _ = saved

    def never(*args, **kwargs):
        pytest.fail("the model loaded before the bad source was refused")

    monkeypatch.setattr(LDRPSPipeline, "from_pretrained", never)
    (tmp_path / "vgg.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="pickle file"):
        load_pipeline(str(folder), perceptual=str(tmp_path / "vgg.bin"))
    with pytest.raises(ValueError, match="captioner folder /nonexistent/captioner does not exist"):
        load_pipeline(str(folder), captioner="/nonexistent/captioner")
