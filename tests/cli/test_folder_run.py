"""``ldrps-restore`` over folders, as a user runs it: resume, the manifest, failures on one line, stop signals,
non-finite results, progress, and the image-file rules end to end."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import png
import pytest
import torch
from command_line import forbid
from PIL import ExifTags

from ldrps_pipeline import LDRPSPipeline
from ldrps_pipeline.cli import restore as cli

FAST = ["--steps", "2", "--recurrences", "0"]


def photo(path: Path, width: int = 12, height: int = 10, mode: str = "RGB", seed: int = 0, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((height, width, 4)) * 255).astype(np.uint8)
    PIL.Image.fromarray(pixels, "RGBA").convert(mode).save(path, **options)
    return path


def run(model, *args, quiet=True):
    return cli.main([*map(str, args), "--model", model, *FAST, *(["--quiet"] if quiet else [])])


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def statuses(manifest: Path) -> dict[str, str]:
    """The last status of every input."""
    return {Path(r["input"]).name: r["status"] for r in records(manifest)}


def test_a_folder_run_records_everything_goes_on_after_failures_and_resumes(model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photo(photos / "a.png")
    photo(photos / "sub" / "b.jpg", seed=1)
    (photos / "text.png").write_text("not an image")
    photo(photos / "tiny.png", 1, 1)
    good = photo(tmp_path / "whole.png")
    (photos / "truncated.png").write_bytes(good.read_bytes()[:150])
    out = tmp_path / "out"
    assert run(model, photos, "--recursive", "-o", out, quiet=False) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ldrps-restore: error:")]
    assert len(errors) == 3 and "Traceback" not in captured.err
    assert any(f"{photos / 'text.png'}: not an image file" in line for line in errors)
    assert any(f"{photos / 'tiny.png'}: 1x1 px is below the minimum of 8 px" in line for line in errors)
    assert any(f"{photos / 'truncated.png'}: truncated or corrupt" in line for line in errors)
    assert "ldrps-restore: 2 done, 3 failed" in captured.out
    assert "images" in captured.err and "failed=3" in captured.err  # the bar over images, with its counts
    manifest = out / "ldrps-manifest.jsonl"
    first = {Path(r["input"]).name: r for r in records(manifest)}
    done = first["a.png"]
    assert done["status"] == "done" and done["output"] == str(out / "a.png")
    assert done["settings"]["steps"] == 2 and done["settings"]["recurrences"] == 0 and done["seed"] == 0
    assert done["prompt"] == "" and done["device"] == "cpu" and len(done["input_sha256"]) == 64
    assert first["text.png"]["status"] == "failed" and "not an image" in first["text.png"]["reason"]
    assert PIL.Image.open(out / "sub" / "b.png").size == (12, 10)
    written = {p: p.read_bytes() for p in out.rglob("*.png")}
    # Again: the outputs are skipped and counted, the failures tried again; nothing written twice.
    assert run(model, photos, "--recursive", "-o", out, quiet=False) == 1
    assert "ldrps-restore: 2 skipped, 3 failed" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == written
    last_run = records(manifest)[5:]
    assert sorted(r["status"] for r in last_run) == ["failed", "failed", "failed", "skipped", "skipped"]


def test_sigint_abandons_the_image_in_progress_and_a_rerun_does_what_is_left(model, tmp_path, monkeypatch):
    photos = [photo(tmp_path / "in" / f"{name}.png", seed=i) for i, name in enumerate("abc")]
    call = LDRPSPipeline.__call__
    calls = []

    def ctrl_c_during_the_second_image(pipe, image, **kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, while the image is being restored
        return call(pipe, image, **kwargs)

    monkeypatch.setattr(LDRPSPipeline, "__call__", ctrl_c_during_the_second_image)
    out = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    assert run(model, tmp_path / "in", "-o", out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "ldrps-manifest.jsonl"]  # no partial file
    manifest = out / "ldrps-manifest.jsonl"
    assert statuses(manifest) == {"a.png": "done", "b.png": "interrupted"}
    assert records(manifest)[1]["reason"] == "abandoned on SIGINT"
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are put back
    monkeypatch.setattr(LDRPSPipeline, "__call__", call)
    assert run(model, tmp_path / "in", "-o", out) == 0
    assert statuses(manifest) == {"a.png": "skipped", "b.png": "done", "c.png": "done"}
    assert len(photos) == len(list(out.glob("*.png")))


def test_a_second_sigint_stops_at_once_and_records_the_image(model, tmp_path, monkeypatch, capsys):
    photo(tmp_path / "in" / "a.png")

    def ctrl_c_twice(pipe, image, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second raises KeyboardInterrupt here, inside the restoration
        pytest.fail("the second SIGINT did not stop the run")

    monkeypatch.setattr(LDRPSPipeline, "__call__", ctrl_c_twice)
    out = tmp_path / "out"
    assert run(model, tmp_path / "in", "-o", out) == 130
    assert "stopped; the manifest records what finished" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["ldrps-manifest.jsonl"]
    assert records(out / "ldrps-manifest.jsonl")[0]["reason"] == "stopped at once by a second signal"


def test_sigterm_to_the_installed_command_leaves_no_partial_file(tmp_path):
    source = photo(tmp_path / "photo.png", 32, 32)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "ldrps-restore"), str(source), "-o", str(out), "--steps", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as child:
        for line in iter(child.stderr.readline, ""):  # wait until the image is being restored
            if "steps:" in line:
                child.send_signal(signal.SIGTERM)
                break
        remaining = child.stderr.read()
    assert child.returncode == 128 + signal.SIGTERM, remaining[-2000:]
    assert "SIGTERM: stopping" in remaining and "Traceback" not in remaining
    assert [p.name for p in out.iterdir()] == ["ldrps-manifest.jsonl"]
    assert statuses(out / "ldrps-manifest.jsonl") == {"photo.png": "interrupted"}


def test_non_finite_pixels_are_retried_in_float32_with_half_the_posterior_scale(model, tmp_path, monkeypatch):
    call = LDRPSPipeline.__call__
    seen = []

    def not_finite_at_first(pipe, image, **kwargs):
        seen.append((pipe.unet.dtype, pipe.posterior_scheduler.config.posterior_scale, kwargs["preset"]))
        result = call(pipe, image, **kwargs)
        if len(seen) == 1:
            result.images[0][0, 0, 0] = np.nan  # as a decoder overflowing from finite latents would give
        return result

    monkeypatch.setattr(LDRPSPipeline, "__call__", not_finite_at_first)
    out = tmp_path / "out"
    assert run(model, photo(tmp_path / "a.png"), "-o", out, "--dtype", "bfloat16", "--preset", "denoise") == 0
    assert seen == [(torch.bfloat16, 40000.0, "denoise"), (torch.float32, 20000.0, None)]
    record = records(out / "ldrps-manifest.jsonl")[0]
    assert record["status"] == "done"
    assert record["retry"] == (
        "the first try had non-finite pixels from the decoder; retried in float32 with posterior_scale 20000"
    )
    assert record["settings"]["dtype"] == "float32" and record["settings"]["posterior_scale"] == 20000.0
    assert np.isfinite(np.asarray(PIL.Image.open(out / "a.png"))).all()


def nan_latents_when(monkeypatch, condition) -> list[int]:
    """Make every restoration whose pipeline meets ``condition`` write a NaN into its latents at step 0, through a
    step-end callback chained before the command's own; returns the number of steps each restoration ran."""
    call = LDRPSPipeline.__call__
    steps = []

    def calling(pipe, image, **kwargs):
        command_callback = kwargs["callback_on_step_end"]
        steps.append(0)

        def callback(pipe, step, timestep, tensors):
            steps[-1] += 1
            if step == 0 and condition(pipe):
                tensors["latents"][0, 0, 0, 0] = float("nan")
            return command_callback(pipe, step, timestep, tensors)

        return call(pipe, image, **{**kwargs, "callback_on_step_end": callback})

    monkeypatch.setattr(LDRPSPipeline, "__call__", calling)
    return steps


def test_non_finite_latents_are_caught_in_the_pipeline_and_retried(model, tmp_path, monkeypatch):
    steps = nan_latents_when(monkeypatch, lambda pipe: pipe.posterior_scheduler.config.posterior_scale > 30000)
    out = tmp_path / "out"
    argv = [photo(tmp_path / "a.png"), "-o", out, "--model", model, "--steps", "4", "--recurrences", "1", "--quiet"]
    assert cli.main(list(map(str, argv))) == 0
    assert steps == [4, 6]  # the first try stopped at the end of pass 0 (4 steps); the retry ran both passes
    record = records(out / "ldrps-manifest.jsonl")[0]
    assert record["status"] == "done" and record["retry"].startswith("the first try had non-finite latents")
    assert "in pass 0; retried in float32 with posterior_scale 20000" in record["retry"]
    assert np.isfinite(np.asarray(PIL.Image.open(out / "a.png"))).all()


def test_a_result_not_finite_twice_fails_on_one_line_and_writes_nothing(model, tmp_path, monkeypatch, capsys):
    nan_latents_when(monkeypatch, lambda pipe: True)
    out = tmp_path / "out"
    assert run(model, photo(tmp_path / "a.png"), "-o", out) == 1
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    (line,) = [line for line in errors.splitlines() if "a.png" in line]
    assert line.startswith("ldrps-restore: error: ") and "non-finite latents" in line
    assert "after a retry in float32 with posterior_scale 20000; nothing was written" in line
    assert not (out / "a.png").exists()
    assert records(out / "ldrps-manifest.jsonl")[0]["status"] == "failed"


def test_an_output_folder_that_cannot_be_written_is_refused_before_loading(model, tmp_path, monkeypatch, capsys):
    forbid(monkeypatch, cli, "load_pipeline", "the model was loaded")
    assert run(model, photo(tmp_path / "a.png"), "-o", "/proc/ldrps-out") == 2
    assert "output folder /proc/ldrps-out cannot be written" in capsys.readouterr().err


def test_image_file_rules_end_to_end(model, tmp_path):
    inputs = tmp_path / "in"
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    photo(inputs / "sideways.jpg", 16, 10, exif=exif)
    photo(inputs / "gray.png", mode="L")
    photo(inputs / "alpha.png", mode="RGBA")
    deep = np.random.default_rng(0).integers(0, 65536, (10, 12), dtype=np.uint16)
    writer = png.Writer(12, 10, greyscale=True, bitdepth=16)
    with open(inputs / "deep.png", "wb") as file:
        writer.write(file, deep)
    scan = np.random.default_rng(1).integers(0, 4096, (10, 12, 3)).astype(">u2")  # a 12-bit scan
    (inputs / "scan.ppm").write_bytes(b"P6\n12 10\n4095\n" + scan.tobytes())
    out = tmp_path / "out"
    assert run(model, inputs, "-o", out) == 0
    assert PIL.Image.open(out / "sideways.png").size == (10, 16)  # upright
    assert PIL.Image.open(out / "gray.png").mode == "RGB"  # colourised by default
    restored_alpha = np.asarray(PIL.Image.open(out / "alpha.png").getchannel("A"))
    assert np.array_equal(restored_alpha, np.asarray(PIL.Image.open(inputs / "alpha.png").getchannel("A")))
    assert png.Reader(filename=str(out / "deep.png")).read()[3]["bitdepth"] == 16
    scan_info = png.Reader(filename=str(out / "scan.png")).read()[3]
    assert scan_info["bitdepth"] == 16 and scan_info["planes"] == 3
    by_input = {Path(r["input"]).name: r for r in records(out / "ldrps-manifest.jsonl")}
    assert by_input["scan.ppm"]["precision"] == "16-bit"
    kept = tmp_path / "kept"
    assert run(model, inputs / "gray.png", inputs / "deep.png", "-o", kept, "--keep-gray", "--ext", "tiff") == 0
    assert PIL.Image.open(kept / "gray.tiff").mode == "L" and PIL.Image.open(kept / "deep.tiff").mode == "I;16"


@pytest.mark.parametrize("option", [["--max-pixels", "0"], ["--max-pixels", str(PIL.Image.MAX_IMAGE_PIXELS + 1)]])
def test_the_pixel_limit_cannot_be_lifted_past_pillows_guard(model, tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        run(model, photo(tmp_path / "a.png"), "-o", tmp_path / "out", *option)
    assert "argument --max-pixels: must be an integer in [1, " in capsys.readouterr().err


def test_an_image_above_the_pixel_limit_names_the_limit_and_the_flag(model, tmp_path, capsys):
    assert run(model, photo(tmp_path / "a.png", 12, 10), "-o", tmp_path / "out", "--max-pixels", "100") == 1
    assert "12x10 px (120 pixels) is above the limit of 100 pixels" in capsys.readouterr().err
    assert run(model, photo(tmp_path / "a.png", 12, 10), "-o", tmp_path / "out", "--max-pixels", "120") == 0
