"""``examples/benchmark_pairs.py`` on the bundled demo model: two presets scored on the same pairs, one model load."""

import numpy as np
import PIL.Image
import pytest


def write_pairs(root, names=("a", "b")):
    degraded, clean = root / "noise", root / "clean"
    degraded.mkdir()
    clean.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(40, 200, size=(16, 24, 3))
        noisy = np.clip(image + rng.normal(0, 30, size=image.shape), 0, 255)
        PIL.Image.fromarray(image.astype(np.uint8)).save(clean / f"{name}.png")
        PIL.Image.fromarray(noisy.astype(np.uint8)).save(degraded / f"{name}.png")
    return degraded, clean


def test_scores_every_preset_on_the_same_pairs_with_one_model_load(example, tmp_path, capsys, monkeypatch):
    script = example("benchmark_pairs")
    degraded, clean = write_pairs(tmp_path)
    loads = []
    load = script.load_pipeline
    monkeypatch.setattr(script, "load_pipeline", lambda *args: loads.append(args) or load(*args))
    argv = [str(degraded), str(clean), "--presets", "fast", "denoise", "--steps", "2", "--recurrences", "0"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert loads == [("demo",)]
    for preset in ("fast", "denoise"):
        assert f"ldrps-{preset}" in out
        (line,) = [line for line in out.splitlines() if line.startswith(f"{preset}: ")]
        assert line.endswith(" dB)") and " dB -> " in line


def test_mismatched_folders_are_refused_before_the_model_loads(example, tmp_path, capsys, monkeypatch):
    script = example("benchmark_pairs")
    monkeypatch.setattr(script, "load_pipeline", lambda *args: pytest.fail("the model loaded"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "clean").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "empty"), str(tmp_path / "clean")])
    assert exit_info.value.code == 2 and "error" in capsys.readouterr().err
