"""``examples/degrade_folder.py``: degraded / clean pairs that ``ldrps-benchmark --pairs`` reads, the same every time."""

import numpy as np
import PIL.Image
import pytest
import torch

from ldrps_pipeline.evaluation.paired_images import match_pairs, read_image


def test_writes_pairs_with_sigma_30_noise_at_the_resized_size(example, tmp_path, capsys):
    script = example("degrade_folder")
    clean_dir = tmp_path / "kodak"
    clean_dir.mkdir()
    for index, (height, width) in enumerate([(48, 64), (64, 48)]):
        PIL.Image.fromarray(np.full((height, width, 3), 100 + 20 * index, dtype=np.uint8)).save(
            clean_dir / f"kodim{index}.png"
        )
    assert script.main([str(clean_dir), str(tmp_path / "pairs"), "--degradation", "noise", "--resize", "32"]) == 0
    assert "2 pairs in" in capsys.readouterr().out
    match = match_pairs(tmp_path / "pairs" / "noise", tmp_path / "pairs" / "clean")
    assert [pair.name for pair in match.pairs] == ["kodim0", "kodim1"]
    noises = []
    for pair in match.pairs:
        degraded, clean = read_image(pair.degraded), read_image(pair.clean)
        assert degraded.shape == clean.shape == (1, 3, 32, 32)
        noises.append(degraded - clean)
        # mid-grey images: no clamping, so the noise is sigma 30 (in 0-255 units) up to 8-bit rounding
        assert noises[-1].std().item() * 255 == pytest.approx(30, rel=0.06)
    assert not torch.allclose(noises[0], noises[1])  # each image has its own seed
    first = (tmp_path / "pairs" / "noise" / "kodim1.png").read_bytes()
    script.main([str(clean_dir), str(tmp_path / "again"), "--resize", "32"])
    assert (tmp_path / "again" / "noise" / "kodim1.png").read_bytes() == first  # the same seeds every time


def test_refuses_to_write_into_pairs_already_there(example, tmp_path, capsys):
    script = example("degrade_folder")
    clean_dir = tmp_path / "clean_images"
    clean_dir.mkdir()
    PIL.Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(clean_dir / "1.png")
    assert script.main([str(clean_dir), str(tmp_path / "pairs")]) == 0
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(clean_dir), str(tmp_path / "pairs")])
    assert exit_info.value.code == 2 and "pairs/clean is not empty" in capsys.readouterr().err
