"""Every loading path, the remote-code ones in a fresh process (as a user would run them); the ``saved`` fixture
is in conftest.py."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from remote_code import PIPELINE_FILE, restore, run_fresh

from ldrps_pipeline import AlignmentModule, LDRPSPipeline, RecurrentPosteriorScheduler
from ldrps_pipeline.hub import loading
from ldrps_pipeline.hub.loading import demo_model_path, load_pipeline, resolve_model
from tiny_components import tiny_components, tiny_pipeline


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
    downloads, loads = [], []

    def download(repo_id, filename):
        downloads.append((repo_id, filename))
        return str(folder / filename)

    def from_pretrained(model, dtype, use_safetensors):
        loads.append((model, use_safetensors))
        return "the pipeline"

    monkeypatch.setattr(loading, "hf_hub_download", download)
    monkeypatch.setattr(LDRPSPipeline, "from_pretrained", from_pretrained)
    assert load_pipeline("user/repo") == "the pipeline"
    assert downloads == [("user/repo", "model_index.json")] and loads == [("user/repo", True)]


def test_pickle_weights_are_loaded_only_when_allowed(saved, tmp_path):
    _, reference = saved
    folder = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    assert list(folder.rglob("*.bin"))  # transformers writes the text encoder as safetensors all the same
    with pytest.raises(OSError, match=r"only safetensors weights are loaded.*--allow-pickle"):
        load_pipeline(str(folder))
    assert torch.equal(restore(load_pipeline(str(folder), allow_pickle=True)), reference)
