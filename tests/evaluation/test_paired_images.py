"""``ldrps-benchmark --pairs``: matching two folders by file stem, reading the images, scoring the pairs with and
without LPIPS, and the command line's refusals before the model loads."""

import json
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch
from command_line import forbid
from command_line import refused as refused_by_argparse

from ldrps_pipeline.evaluation import quality_benchmark as benchmark
from ldrps_pipeline.evaluation.lpips_metric import LPIPS_MISSING_NOTE, load_lpips
from ldrps_pipeline.evaluation.metrics import psnr, ssim_y
from ldrps_pipeline.evaluation.paired_images import (
    PairsConfig,
    match_pairs,
    read_image,
    read_pair,
    read_pairs,
    run_pairs_benchmark,
)
from ldrps_pipeline.evaluation.results import format_table, write_json
from tiny_components import tiny_image, tiny_pipeline

SIZE = 32


def save(path, image: torch.Tensor) -> None:
    """Write a (1, 3, H, W) image in [0, 1] as an 8-bit PNG file (whatever the suffix: lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    PIL.Image.fromarray(array).save(path, format="PNG")


@pytest.fixture
def folders(tmp_path):
    """degraded/ and clean/ with two pairs (a.png-a.png, b.png-b.jpg) and one unmatched file in each."""
    degraded, clean = tmp_path / "degraded", tmp_path / "clean"
    for index, (name, clean_name) in enumerate((("a", "a.png"), ("b", "b.jpg"))):
        image = tiny_image(SIZE, SIZE, seed=index)
        save(clean / clean_name, image)
        save(degraded / f"{name}.png", image * 0.5 + 0.1 * tiny_image(SIZE, SIZE, seed=10 + index))
    save(degraded / "only_degraded.png", tiny_image(SIZE, SIZE))
    save(clean / "only_clean.png", tiny_image(SIZE, SIZE))
    (clean / "notes.txt").write_text("not an image")
    (clean / ".hidden.png").write_bytes(b"")
    return degraded, clean


def test_pairs_match_by_file_stem_and_unmatched_names_are_listed(folders):
    degraded, clean = folders
    match = match_pairs(degraded, clean)
    assert [(p.name, p.degraded.name, p.clean.name) for p in match.pairs] == [
        ("a", "a.png", "a.png"),
        ("b", "b.png", "b.jpg"),
    ]
    assert match.unmatched_degraded == ("only_degraded",) and match.unmatched_clean == ("only_clean",)
    message = match.unmatched_message()
    assert "1 degraded image(s) without a partner: only_degraded" in message
    assert "1 clean image(s) without a partner: only_clean" in message


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "the degraded folder {degraded} does not exist"),
        ("file", "the degraded folder {degraded} is a file, not a folder"),
        ("empty", "the degraded folder {degraded} holds no image"),
        ("no match", "no file name is in both {degraded} and {clean} (pairs match by file stem): degraded x; clean a"),
        ("same stem", "the degraded folder holds two images named 'x': x.jpg, x.png"),
    ],
)
def test_folders_that_cannot_pair_are_refused_with_a_clear_message(tmp_path, case, message):
    degraded, clean = tmp_path / "degraded", tmp_path / "clean"
    save(clean / "a.png", tiny_image())
    if case == "file":
        degraded.write_text("")
    elif case == "empty":
        degraded.mkdir()
        (degraded / "readme.txt").write_text("no images here")
    elif case in ("no match", "same stem"):
        save(degraded / "x.png", tiny_image())
        if case == "same stem":
            save(degraded / "x.jpg", tiny_image())
    with pytest.raises(ValueError) as error:
        match_pairs(degraded, clean)
    assert message.format(degraded=degraded, clean=clean) in str(error.value)


def test_images_are_read_upright_as_rgb_in_zero_one(tmp_path):
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:, :15] = (255, 0, 0)
    stored[:, 15:] = (0, 0, 255)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: the stored image must be turned 90 degrees clockwise to be upright
    PIL.Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    image = read_image(tmp_path / "rotated.png")
    assert image.shape == (1, 3, 30, 20) and image.dtype == torch.float32
    upright = np.rot90(stored, k=-1)  # turned clockwise: the stored left half (red) is now on top
    assert torch.equal(image[0].permute(1, 2, 0), torch.from_numpy(upright.copy()).float() / 255)
    assert image[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]

    PIL.Image.fromarray(np.full((16, 16), 128, dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    PIL.Image.fromarray(np.full((16, 16, 4), 64, dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    assert torch.allclose(read_image(tmp_path / "gray.png"), torch.full((1, 3, 16, 16), 128 / 255))
    assert torch.allclose(read_image(tmp_path / "rgba.png"), torch.full((1, 3, 16, 16), 64 / 255))


def test_a_pair_of_two_sizes_needs_resize(tmp_path):
    save(tmp_path / "d" / "1.png", tiny_image(32, 48))
    save(tmp_path / "c" / "1.png", tiny_image(40, 40))
    (pair,) = match_pairs(tmp_path / "d", tmp_path / "c").pairs
    with pytest.raises(ValueError, match=r"c/1.png is 40x40 px but .*d/1.png is 48x32 px; give --resize N"):
        read_pair(pair, resize=None)
    resized = read_pair(pair, resize=24)
    assert resized.degraded.shape == resized.clean.shape == (1, 3, 24, 24)
    assert 0 <= resized.degraded.min() and resized.degraded.max() <= 1


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture
def no_lpips(monkeypatch):
    """Neither lpips nor pyiqa importable (a None entry in sys.modules makes the import fail)."""
    monkeypatch.setitem(sys.modules, "lpips", None)
    monkeypatch.setitem(sys.modules, "pyiqa", None)


def test_pairs_are_scored_for_the_input_and_ldrps_over_seeds(folders, pipe, no_lpips, tmp_path):
    degraded_dir, clean_dir = folders
    config = PairsConfig(str(degraded_dir), str(clean_dir), preset="denoise", steps=2, recurrences=0, seeds=(0, 1))
    with pytest.warns(UserWarning, match="without a partner: only_degraded"):
        results = run_pairs_benchmark(config, pipe=pipe, progress=False)
    records = {(r.method, r.image, r.seed): r for r in results.records}
    assert set(records) == {
        ("input", "a", None),
        ("input", "b", None),
        ("ldrps-denoise", "a", 0),
        ("ldrps-denoise", "a", 1),
        ("ldrps-denoise", "b", 0),
        ("ldrps-denoise", "b", 1),
    }
    assert {r.degradation for r in results.records} == {"degraded"}  # the degraded folder's name
    clean, degraded = read_image(clean_dir / "b.jpg"), read_image(degraded_dir / "b.png")
    assert records["input", "b", None].psnr == pytest.approx(float(psnr(degraded, clean)[0]), abs=1e-4)
    assert records["input", "b", None].ssim_y == pytest.approx(float(ssim_y(degraded, clean)[0]), abs=1e-5)
    assert records["ldrps-denoise", "a", 0].psnr != records["ldrps-denoise", "a", 1].psnr
    assert all(r.lpips is None for r in results.records) and results.environment["lpips"] is None
    # the preset was applied for the run and the pipeline left as it was
    assert dict(pipe.posterior_scheduler.config) == dict(tiny_pipeline().posterior_scheduler.config)

    table = format_table(results).splitlines()
    assert table[0] == "| degradation | method | PSNR (dB) | SSIM (Y) |"
    assert [line.split("|")[2].strip() for line in table[2:4]] == ["input", "ldrps-denoise"]
    assert "2 image pairs at their own size, preset denoise, seeds [0, 1], steps 2, recurrences 0" in table[5]
    assert LPIPS_MISSING_NOTE in table and any("only_clean" in line for line in table)
    write_json(results, tmp_path / "pairs.json")
    data = json.loads((tmp_path / "pairs.json").read_text())
    assert data["config"]["preset"] == "denoise" and data["config"]["clean_dir"] == str(clean_dir)
    assert len(data["records"]) == 6 and data["summary"][1]["images"] == 2 and data["summary"][1]["seeds"] == 2


class FakeLPIPSNetwork:
    """Stands in for ``lpips.LPIPS``: the mean absolute difference of its two inputs, shape (N, 1, 1, 1)."""

    def __init__(self, net: str, verbose: bool) -> None:
        self.net = net
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        FakeLPIPSNetwork.instance = self

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        self.calls.append((in0, in1))
        return (in0 - in1).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


def test_lpips_goes_through_the_lpips_package_with_images_in_minus_one_one(folders, pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPSNetwork))
    degraded_dir, clean_dir = folders
    config = PairsConfig(str(degraded_dir), str(clean_dir), steps=2, recurrences=0, label="mine")
    pair_set = read_pairs(config)
    results = run_pairs_benchmark(config, pipe=pipe, pair_set=pair_set, progress=False)
    network = FakeLPIPSNetwork.instance
    assert network.net == "alex" and results.environment["lpips"] == "lpips (AlexNet)"
    assert len(network.calls) == 4  # input and ldrps-default, for two pairs
    for in0, in1 in network.calls:
        assert in0.shape == in1.shape == (1, 3, SIZE, SIZE)
        assert -1 <= in0.min() and in0.max() <= 1 and in1.min() < 0  # NCHW in [-1, 1]
    pair = pair_set.images[0]
    (record,) = [r for r in results.records if (r.method, r.image) == ("input", pair.name)]
    assert record.lpips == pytest.approx(float(2 * (pair.degraded - pair.clean).abs().mean()), rel=1e-5)
    table = format_table(results).splitlines()
    assert table[0].endswith("| LPIPS |") and table[2].startswith("| mine | input |")
    assert "LPIPS: AlexNet, computed by lpips." in table


def test_lpips_falls_back_to_pyiqa_with_images_in_zero_one(monkeypatch):
    calls = []

    def create_metric(name, device):
        calls.append((name, device))

        def metric(x, y):
            calls.append((x, y))
            return (x - y).square().mean(dim=(1, 2, 3))

        return metric

    monkeypatch.setitem(sys.modules, "lpips", None)
    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    metric = load_lpips("cpu")
    assert metric.package == "pyiqa" and calls == [("lpips", torch.device("cpu"))]
    x, y = tiny_image(16, 16, batch=2, seed=1), tiny_image(16, 16, batch=2, seed=2)
    distance = metric(x, y)
    assert distance.shape == (2,)
    assert torch.equal(calls[1][0], x) and torch.equal(calls[1][1], y)  # [0, 1], as given
    assert torch.allclose(distance, (x - y).square().mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="two RGB batches of one shape"):
        metric(x, y[:, :2])


def test_no_lpips_package_means_no_lpips_metric(no_lpips):
    assert load_lpips() is None


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_pipeline().save_pretrained(folder)
    return str(folder)


def test_command_line_pairs(folders, model, tmp_path, capsys, no_lpips):
    degraded, clean = folders
    out = tmp_path / "pairs.json"
    argv = ["--pairs", str(degraded), str(clean), "--model", model, "--preset", "dehaze", "--steps", "2"]
    argv += ["--recurrences", "0", "--resize", "16", "--label", "HSTS", "--json", str(out), "--quiet"]
    assert benchmark.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("ldrps-benchmark: warning: 1 degraded image(s) without a partner: only_degraded")
    assert "| HSTS | input |" in captured.out and "| HSTS | ldrps-dehaze |" in captured.out
    assert "2 image pairs resized to 16x16, preset dehaze" in captured.out
    data = json.loads(out.read_text())
    assert data["config"]["resize"] == 16 and {r["image"] for r in data["records"]} == {"a", "b"}


@pytest.fixture
def never_runs(monkeypatch):
    forbid(monkeypatch, benchmark, "run_pairs_benchmark", "the pairs benchmark ran")
    forbid(monkeypatch, benchmark, "run_benchmark", "the crops benchmark ran")


def refused(capsys, argv):
    return refused_by_argparse(benchmark.main, capsys, argv)


def test_command_line_refuses_bad_pairs_before_loading_the_model(tmp_path, capsys, never_runs):
    missing = tmp_path / "missing"
    save(tmp_path / "clean" / "1.png", tiny_image(40, 40))
    save(tmp_path / "degraded" / "1.png", tiny_image(32, 32))
    clean, degraded = tmp_path / "clean", tmp_path / "degraded"
    error = refused(capsys, ["--pairs", missing, clean])
    assert f"argument --pairs: the degraded folder {missing} does not exist" in error
    assert "give --resize N to score both at NxN" in refused(capsys, ["--pairs", degraded, clean])
    assert "argument --resize: must be an integer >= 16" in refused(
        capsys, ["--pairs", degraded, clean, "--resize", "8"]
    )
    assert "argument --preset: invalid choice: 'nonsense'" in refused(
        capsys, ["--pairs", degraded, clean, "--preset", "nonsense"]
    )


def test_command_line_keeps_the_options_of_the_two_runs_apart(tmp_path, capsys, never_runs):
    pairs = ["--pairs", tmp_path, tmp_path]
    error = refused(capsys, [*pairs, "--size", "32", "--photos", "chelsea"])
    assert "--photos, --size: options of the held-out crops, not of --pairs" in error
    assert "--preset, --resize: options of --pairs, not of the held-out crops" in refused(
        capsys, ["--preset", "denoise", "--resize", "64"]
    )


def test_command_line_pairs_loads_pickle_weights_only_with_allow_pickle(folders, tmp_path, capsys, no_lpips):
    degraded, clean = folders
    model = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(model, safe_serialization=False)
    argv = ["--pairs", str(degraded), str(clean), "--model", str(model), "--steps", "1", "--recurrences", "0"]
    argv += ["--resize", "16", "--quiet"]
    capsys.readouterr()
    assert benchmark.main(argv) == 2
    error = capsys.readouterr().err
    assert "only safetensors weights are loaded" in error and "--allow-pickle" in error
    assert benchmark.main([*argv, "--allow-pickle"]) == 0
    assert "| degraded | ldrps-default |" in capsys.readouterr().out
