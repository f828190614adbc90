import json
import math
import re

import numpy as np
import pytest
import torch
from command_line import forbid
from command_line import refused as refused_by_argparse

from ldrps_pipeline.evaluation import quality_benchmark as benchmark
from ldrps_pipeline.evaluation.degradations import get_degradation
from ldrps_pipeline.evaluation.methods import evaluate_method
from ldrps_pipeline.evaluation.metrics import psnr, ssim_y
from ldrps_pipeline.evaluation.quality_benchmark import BenchmarkConfig, Crop, methods_for, run_benchmark
from ldrps_pipeline.evaluation.results import format_table, write_json
from tiny_components import tiny_image, tiny_pipeline

CROP = Crop("smooth/0", tiny_image(32, 32))
CONFIG = BenchmarkConfig(
    model="tiny", degradations=("noise", "blur", "grayscale"), steps=3, recurrences=1, seeds=(0, 1)
)
EXPECTED_ROWS = [
    ("noise", "input"),
    ("noise", "ldrps-default"),
    ("noise", "ldrps-denoise"),
    ("noise", "ldrps-known-operator (oracle)"),
    ("noise", "ldrps-guidance-off"),
    ("noise", "ldrps-no-recurrence"),
    ("noise", "nl-means"),
    ("noise", "tv-chambolle"),
    ("blur", "input"),
    ("blur", "ldrps-default"),
    ("blur", "ldrps-known-operator (oracle)"),
    ("blur", "ldrps-guidance-off"),
    ("blur", "ldrps-no-recurrence"),
    ("blur", "richardson-lucy-oracle (oracle)"),
    ("grayscale", "input"),
    ("grayscale", "ldrps-default"),
    ("grayscale", "ldrps-known-operator (oracle)"),
    ("grayscale", "ldrps-guidance-off"),
    ("grayscale", "ldrps-no-recurrence"),
]
STOCHASTIC = {
    "ldrps-default",
    "ldrps-denoise",
    "ldrps-known-operator (oracle)",
    "ldrps-guidance-off",
    "ldrps-no-recurrence",
}


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def results(pipe):
    return run_benchmark(CONFIG, pipe=pipe, crops=[CROP], progress=False)


def records_of(results, degradation, method):
    return [r for r in results.records if r.degradation == degradation and r.method == method]


def test_table_has_one_row_per_degradation_and_method(results):
    lines = format_table(results).splitlines()
    assert lines[0] == "| degradation | method | PSNR (dB) | SSIM (Y) |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2 : 2 + len(EXPECTED_ROWS)]]
    assert [(row[0], row[1]) for row in rows] == EXPECTED_ROWS
    for _, method, psnr_cell, ssim_cell in rows:
        psnr_match = re.fullmatch(r"(-?\d+\.\d\d) ± (\d+\.\d\d)", psnr_cell)
        ssim_match = re.fullmatch(r"(-?\d\.\d{4}) ± (\d\.\d{4})", ssim_cell)
        assert psnr_match and ssim_match
        if method not in STOCHASTIC:  # deterministic: one run, no spread over seeds
            assert float(psnr_match[2]) == 0 and float(ssim_match[2]) == 0
    assert lines[2 + len(EXPECTED_ROWS)] == ""
    assert "(oracle)" in lines[-1]


def test_json_is_written_with_every_value_and_the_config(results, tmp_path):
    path = tmp_path / "out" / "bench.json"
    write_json(results, path)
    data = json.loads(path.read_text())
    assert data["config"]["steps"] == 3 and data["config"]["seeds"] == [0, 1] and data["config"]["model"] == "tiny"
    assert {"commit", "cpu", "torch_threads", "device", "seconds"} <= set(data["environment"])
    # one record per crop for a deterministic method, one per crop and seed for LD-RPS
    expected = sum(2 if method in STOCHASTIC else 1 for _, method in EXPECTED_ROWS)
    assert len(data["records"]) == expected
    assert all(math.isfinite(r["psnr"]) and -1 <= r["ssim_y"] <= 1 for r in data["records"])
    assert {r["seed"] for r in data["records"] if r["method"] == "ldrps-default"} == {0, 1}
    assert len(data["summary"]) == len(EXPECTED_ROWS)


def test_json_never_overwrites_a_file(results, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        write_json(results, path)
    assert path.read_text() == "keep me"


def test_degraded_input_is_scored_correctly(results):
    (record,) = records_of(results, "noise", "input")
    degraded = get_degradation("noise")(CROP.image, benchmark.degradation_seed("noise", CROP.name))
    assert not torch.equal(degraded, CROP.image)
    mse = np.mean((degraded.double().numpy() - CROP.image.double().numpy()) ** 2)
    assert record.psnr == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
    assert record.ssim_y == pytest.approx(float(ssim_y(degraded, CROP.image)[0]), abs=1e-6)
    (row,) = [s for s in results.summary() if (s.degradation, s.method) == ("noise", "input")]
    assert row.psnr_mean == record.psnr and row.psnr_std == 0 and row.seeds == 1


def test_summary_is_the_mean_and_std_over_seeds(results):
    records = records_of(results, "noise", "ldrps-default")
    (row,) = [s for s in results.summary() if (s.degradation, s.method) == ("noise", "ldrps-default")]
    values = [r.psnr for r in records]
    assert row.psnr_mean == pytest.approx(np.mean(values)) and row.psnr_std == pytest.approx(np.std(values, ddof=1))


def test_guidance_off_differs_from_guided_and_pipeline_is_left_unchanged(pipe, results):
    for degradation in CONFIG.degradations:
        guided = records_of(results, degradation, "ldrps-default")
        prior = records_of(results, degradation, "ldrps-guidance-off")
        assert all(g.psnr != p.psnr for g, p in zip(guided, prior, strict=True))
    assert pipe.posterior_scheduler.config.posterior_scale == 40000.0
    assert dict(pipe.posterior_scheduler.config) == dict(tiny_pipeline().posterior_scheduler.config)


def test_the_known_operator_oracle_runs_where_the_degradation_has_an_operator(pipe, results):
    assert "ldrps-known-operator" in results.oracles
    for degradation in CONFIG.degradations:
        known = records_of(results, degradation, "ldrps-known-operator")
        learned = records_of(results, degradation, "ldrps-default")
        assert len(known) == len(CONFIG.seeds) and all(k.psnr != n.psnr for k, n in zip(known, learned, strict=True))
    # Haze's random transmission map has no known operator.
    assert "ldrps-known-operator" not in {m.name for m in methods_for(pipe, "haze", CONFIG)}


def test_the_ablations_are_the_default_without_recurrence_and_with_the_empty_prompt(pipe, results):
    degraded = get_degradation("noise")(CROP.image, benchmark.degradation_seed("noise", CROP.name))
    direct = pipe(
        degraded,
        prompt="",
        num_inference_steps=3,
        recurrences=0,
        output_type="pt",
        generator=torch.Generator().manual_seed(1),
    ).images
    (recorded,) = [r for r in records_of(results, "noise", "ldrps-no-recurrence") if r.seed == 1]
    assert recorded.psnr == pytest.approx(float(psnr(direct, CROP.image)[0]), abs=1e-9)
    # Without a captioner the default already runs with the empty prompt: no separate row.
    assert "ldrps-no-prompt" not in {m.name for m in methods_for(pipe, "noise", CONFIG)}
    captioned = tiny_pipeline()
    captioned.captioner = object()  # only its presence is read when the methods are listed
    assert "ldrps-no-prompt" in {m.name for m in methods_for(captioned, "noise", CONFIG)}


def test_an_ldrps_method_restores_a_batch_as_each_image_alone(pipe):
    method = next(m for m in methods_for(pipe, "noise", CONFIG) if m.name == "ldrps-default")
    images = torch.cat([CROP.image, tiny_image(32, 32, seed=3)])
    batch = method.restore(images, 1)
    for i in range(2):
        assert torch.allclose(batch[i : i + 1], method.restore(images[i : i + 1], 1), atol=1e-5)


def test_seeds_are_reproducible(pipe, results):
    method = next(m for m in methods_for(pipe, "noise", CONFIG) if m.name == "ldrps-denoise")
    degraded = get_degradation("noise")(CROP.image, benchmark.degradation_seed("noise", CROP.name))
    rerun = evaluate_method(method, CROP.image, degraded, seeds=(1, 0))
    recorded = {r.seed: r.psnr for r in records_of(results, "noise", "ldrps-denoise")}
    assert {score.seed: score.psnr for score in rerun} == recorded
    assert recorded[0] != recorded[1]


def test_posterior_scale_override_replaces_the_guided_scale(pipe):
    config = BenchmarkConfig(degradations=("noise",), steps=3, recurrences=1, posterior_scale=0.0)
    methods = {m.name: m for m in methods_for(pipe, "noise", config)}
    # a zero scale turns the task-blind run into the prior alone
    guided = methods["ldrps-default"].restore(CROP.image, 0)
    assert torch.equal(guided, methods["ldrps-guidance-off"].restore(CROP.image, 0))


def test_config_refuses_a_posterior_scale_that_is_not_finite_and_non_negative():
    for scale in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="posterior_scale must be a finite number >= 0"):
            BenchmarkConfig(posterior_scale=scale)


def test_command_line(tmp_path, capsys):
    model = tmp_path / "model"
    tiny_pipeline().save_pretrained(model)
    out = tmp_path / "bench.json"
    argv = ["--model", str(model), "--degradations", "sr_x4", "--photos", "chelsea", "--size", "16"]
    argv += ["--steps", "2", "--recurrences", "0", "--json", str(out), "--quiet"]
    capsys.readouterr()  # save_pretrained's own bars
    assert benchmark.main(argv) == 0
    captured = capsys.readouterr()
    table = captured.out
    assert captured.err == ""  # --quiet: no loading bars, no progress bar
    assert "| sr_x4 | bicubic |" in table and "| sr_x4 | ldrps-guidance-off |" in table
    data = json.loads(out.read_text())
    assert {r["image"] for r in data["records"]} == {"chelsea/0"} and data["config"]["model"] == str(model)
    assert benchmark.main([*argv[:7], "18", "--quiet"]) == 2
    assert "size must be a multiple of 4" in capsys.readouterr().err


@pytest.fixture
def never_runs(monkeypatch):
    forbid(monkeypatch, benchmark, "run_benchmark", "the benchmark ran")


def refused(capsys, argv):
    """The error message of an ``ldrps-benchmark`` call that argparse refuses (exit status 2)."""
    return refused_by_argparse(benchmark.main, capsys, argv)


def test_command_line_refuses_a_json_path_it_cannot_create_before_running(tmp_path, capsys, never_runs):
    existing = tmp_path / "bench.json"
    existing.write_text("keep me")
    assert f"argument --json: {existing} exists" in refused(capsys, ["--json", existing])
    assert existing.read_text() == "keep me"
    assert f"argument --json: {tmp_path} is a folder" in refused(capsys, ["--json", tmp_path])
    error = refused(capsys, ["--json", existing / "bench.json"])
    assert f"argument --json: {existing / 'bench.json'} cannot be created: {existing} is a file" in error


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--posterior-scale", "nan"),
        ("--posterior-scale", "inf"),
        ("--posterior-scale", "-1"),
        ("--steps", "0"),
        ("--recurrences", "-1"),
        ("--size", "8"),
        ("--crops-per-photo", "0"),
        ("--seeds", "1.5"),
    ],
)
def test_command_line_refuses_bad_numbers(capsys, never_runs, option, value):
    error = refused(capsys, [option, value])
    assert f"argument {option}: must be" in error and repr(value) in error


def test_command_line_refuses_a_bad_model_or_device_before_running(tmp_path, capsys, never_runs):
    missing = tmp_path / "missing"
    assert f"model folder {missing} does not exist" in refused(capsys, ["--model", missing])
    assert "device 'nonsense' is not a torch device" in refused(capsys, ["--device", "nonsense"])


def test_command_line_loads_pickle_weights_only_with_allow_pickle(tmp_path, capsys):
    model = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(model, safe_serialization=False)
    argv = ["--model", str(model), "--degradations", "sr_x4", "--photos", "chelsea", "--size", "16"]
    argv += ["--steps", "1", "--recurrences", "0", "--quiet"]
    capsys.readouterr()
    assert benchmark.main(argv) == 2
    error = capsys.readouterr().err
    assert "only safetensors weights are loaded" in error and "--allow-pickle" in error
    assert benchmark.main([*argv, "--allow-pickle"]) == 0
    assert "| sr_x4 | ldrps-default |" in capsys.readouterr().out
