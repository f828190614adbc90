"""The run's record (``demo_training.training_log``) and its atomic files (``demo_training.atomic_files``)."""

import json
from pathlib import Path

import pytest

from ldrps_pipeline.demo_training.atomic_files import write_json
from ldrps_pipeline.demo_training.training_log import TrainingLog


def test_a_reopened_log_continues_and_adds_up_the_wall_clock(tmp_path: Path) -> None:
    log = TrainingLog.open(tmp_path, {"seed": 1}, {"vae": 3})
    assert list(log.record) == ["architecture", "vae", "perceptual", "unet", "wall_seconds", "parameters"]
    log.record["vae"].append({"step": 1})
    log.record["wall_seconds"] = 100.0  # as if an earlier invocation had taken 100 s
    log.write()
    reopened = TrainingLog.open(tmp_path, {"seed": 1}, {"vae": 3})
    assert reopened.record["vae"] == [{"step": 1}]
    reopened.save()
    saved = json.loads((tmp_path / "training_log.json").read_text())
    assert 100.0 < saved["wall_seconds"] < 160.0


def test_a_log_of_other_model_options_is_refused(tmp_path: Path) -> None:
    TrainingLog.open(tmp_path, {"seed": 1}, {}).write()
    with pytest.raises(SystemExit, match="other model options"):
        TrainingLog.open(tmp_path, {"seed": 2}, {})


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    write_json({"step": 1}, path)
    with pytest.raises(TypeError):
        write_json({"step": {2}}, path)  # a set is not JSON
    assert json.loads(path.read_text()) == {"step": 1}
