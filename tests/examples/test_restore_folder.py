"""``examples/restore_folder.py`` on the bundled demo model: every image of a folder restored at its own size."""

import numpy as np
import PIL.Image
import pytest


def write_image(path, height: int, width: int, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    PIL.Image.fromarray(array).save(path)


def test_restores_every_image_of_a_folder_and_keeps_existing_outputs(example, tmp_path, capsys):
    script = example("restore_folder")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_image(inputs / "b.png", 24, 40, seed=1)
    write_image(inputs / "a.jpg", 32, 32, seed=0)
    (inputs / "notes.txt").write_text("not an image")
    argv = [str(inputs), str(outputs), "--preset", "fast", "--steps", "2", "--recurrences", "0"]
    assert script.main(argv) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["a.png", "b.png"]
    assert PIL.Image.open(outputs / "b.png").size == (40, 24)  # the input's own size
    assert "a.jpg -> " in capsys.readouterr().out
    restored = (outputs / "a.png").read_bytes()
    assert script.main(argv) == 0
    assert capsys.readouterr().out.count("exists: kept") == 2 and (outputs / "a.png").read_bytes() == restored


@pytest.mark.parametrize("case", ["missing", "empty", "same name"])
def test_refuses_a_folder_it_cannot_restore_before_loading_the_model(example, tmp_path, capsys, monkeypatch, case):
    script = example("restore_folder")
    monkeypatch.setattr(script, "load_pipeline", lambda *args: pytest.fail("the model loaded"))
    folder = tmp_path / "in"
    if case != "missing":
        folder.mkdir()
    if case == "same name":
        write_image(folder / "1.png", 16, 16, seed=0)
        write_image(folder / "1.jpg", 16, 16, seed=0)
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(folder), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = {
        "missing": f"the input folder {folder} does not exist",
        "empty": f"the input folder {folder} holds no image",
        "same name": "the input folder holds two images named '1': 1.jpg, 1.png",
    }[case]
    assert message in capsys.readouterr().err
