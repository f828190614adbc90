"""Every loading path, the remote-code ones in a fresh process (as a user would run them)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import ldrps_pipeline
from ldrps_pipeline import AlignmentModule, LDRPSPipeline, RecurrentPosteriorScheduler
from ldrps_pipeline.hub import export as hub
from ldrps_pipeline.hub import loading
from ldrps_pipeline.hub.export import export_for_hub
from ldrps_pipeline.hub.loading import demo_model_path, load_pipeline, resolve_model
from tiny_components import tiny_components, tiny_image, tiny_pipeline

PIPELINE_FILE = Path(ldrps_pipeline.__file__).parent / "pipeline_ldrps.py"
CALL = {"prompt": "a photo", "num_inference_steps": 6, "recurrences": 1, "output_type": "pt"}


def restore(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(tiny_image(12, 20), generator=torch.Generator().manual_seed(0), **CALL).images


def run_fresh(tmp_path: Path, body: str, block_package: bool = False) -> torch.Tensor:
    """Run ``body`` in a new interpreter that saves its result as ``images``; return that tensor."""
    result = tmp_path / "result.pt"
    lines = ["import sys", "sys.modules['ldrps_pipeline'] = None  # not importable"] if block_package else []
    lines += [
        "import torch",
        "torch.set_num_threads(1)",
        "from diffusers import DiffusionPipeline",
        "image = torch.nn.functional.interpolate(",
        "    torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), size=(12, 20), mode='bilinear'",
        ")",
        *textwrap.dedent(body).strip().splitlines(),
        "pipe.set_progress_bar_config(disable=True)",
        f"images = pipe(image, generator=torch.Generator().manual_seed(0), **{CALL!r}).images",
        f"torch.save({{'images': images, 'class': type(pipe).__module__}}, {str(result)!r})",
    ]
    script = "\n".join(lines)
    # The child imports ldrps_pipeline from where this process did (installed or the source tree).
    package_root = str(Path(ldrps_pipeline.__file__).parent.parent)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": package_root}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    saved = torch.load(result)
    return saved["images"], saved["class"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    pipe = tiny_pipeline()
    pipe.save_pretrained(folder)
    return folder, restore(pipe)


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


def test_hub_export_loads_where_the_package_is_not_importable(saved, tmp_path):
    folder, reference = saved
    exported = export_for_hub(LDRPSPipeline.from_pretrained(folder), tmp_path / "hub")
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ldrps", "LDRPSPipeline"]
    assert index["aligner"] == ["alignment_ldrps", "AlignmentModule"]
    assert index["posterior_scheduler"] == ["scheduling_ldrps", "RecurrentPosteriorScheduler"]
    assert (exported / "aligner" / "alignment_ldrps.py").is_file()
    images, module = run_fresh(
        tmp_path, f"pipe = DiffusionPipeline.from_pretrained({str(exported)!r}, trust_remote_code=True)", True
    )
    assert module.startswith("diffusers_modules")
    assert torch.allclose(images, reference, atol=1e-6)


def test_hub_export_never_writes_into_a_used_folder(saved, tmp_path):
    folder, _ = saved
    target = tmp_path / "used"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_for_hub(LDRPSPipeline.from_pretrained(folder), target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


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


def test_export_command_refuses_a_bad_source_or_a_used_folder_before_loading(saved, tmp_path, capsys, monkeypatch):
    folder, _ = saved

    def load(*args, **kwargs):
        pytest.fail("the model was loaded before the bad input was refused")

    monkeypatch.setattr(hub, "load_pipeline", load)
    missing = tmp_path / "missing"
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    for argv, message in (
        ([missing, tmp_path / "out"], f"model folder {missing} does not exist"),
        ([folder, used], f"{used} exists and is not an empty folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            hub.main([*map(str, argv)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["notes.txt"] and not (tmp_path / "out").exists()
