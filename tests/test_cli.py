import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from ldrps_pipeline import LDRPSPipeline, cli
from ldrps_pipeline.loading import resolve_dtype
from tiny_components import tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_pipeline().save_pretrained(folder)
    return str(folder)


def write_image(path, height=10, width=14, seed=0):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def restore(model, *args):
    return cli.main([*map(str, args), "--model", model, "--steps", "4", "--recurrences", "1", "--quiet"])


def test_restores_each_input_under_its_name(model, tmp_path):
    a = write_image(tmp_path / "a.png")
    b = write_image(tmp_path / "b.jpg", 9, 5, seed=1)
    before = a.read_bytes()
    assert restore(model, a, b, "-o", tmp_path / "out") == 0
    assert PIL.Image.open(tmp_path / "out" / "a.png").size == (14, 10)
    assert PIL.Image.open(tmp_path / "out" / "b.png").size == (5, 9)
    assert a.read_bytes() == before


def test_never_writes_over_an_input_or_an_existing_output(model, tmp_path, capsys):
    a = write_image(tmp_path / "a.png")
    before = a.read_bytes()
    assert restore(model, a, "-o", tmp_path) == 2  # would write tmp_path/a.png, the input itself
    assert "is an input file" in capsys.readouterr().err
    assert a.read_bytes() == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    assert restore(model, a, "-o", out) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "a.png").read_bytes() == b"keep me"
    assert restore(model, a, "-o", out, "--overwrite") == 0
    assert PIL.Image.open(out / "a.png").size == (14, 10)


def test_refuses_colliding_names_missing_files_and_bad_arguments(model, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    a = write_image(tmp_path / "a.png")
    other = write_image(tmp_path / "x" / "a.jpg")
    assert restore(model, a, other, "-o", tmp_path / "out") == 2
    assert "would both be written" in capsys.readouterr().err
    assert restore(model, tmp_path / "missing.png", "-o", tmp_path / "out") == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main([str(a), "-o", str(tmp_path / "o2"), "--model", model, "--steps", "0", "--quiet"]) == 2
    assert "num_inference_steps" in capsys.readouterr().err


def test_console_scripts_are_installed():
    # Installed next to this interpreter by `pip install .`.
    bin_dir = Path(sys.executable).parent
    for command, flag in (("ldrps-restore", "--preset"), ("ldrps-export-hub", "output_dir")):
        completed = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True)
        assert completed.returncode == 0 and flag in completed.stdout, completed.stderr


def test_installed_command_restores_with_the_bundled_demo_model(tmp_path):
    # Runs the installed console script outside the source tree: the package itself must carry the demo model.
    source = write_image(tmp_path / "photo.png", 20, 12)
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ldrps-restore"), str(source), "-o", "out", "--model", "demo"]
        + ["--steps", "3", "--recurrences", "1", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert PIL.Image.open(tmp_path / "out" / "photo.png").size == (12, 20)


def test_dtype_option_loads_the_weights_in_that_dtype(model, tmp_path, monkeypatch):
    loaded = []
    load = cli.load_pipeline

    def recording_load(name, *, dtype):
        pipe = load(name, dtype=dtype)
        loaded.append(pipe.unet.dtype)
        return pipe

    monkeypatch.setattr(cli, "load_pipeline", recording_load)
    a = write_image(tmp_path / "a.png")
    assert restore(model, a, "-o", tmp_path / "bf16", "--dtype", "bfloat16") == 0
    assert PIL.Image.open(tmp_path / "bf16" / "a.png").size == (14, 10)
    # auto: bfloat16 only on a CUDA card that supports it; this CPU gets float32.
    assert restore(model, a, "-o", tmp_path / "auto", "--device", "cpu") == 0
    assert loaded == [torch.bfloat16, torch.float32]


def test_compile_option_compiles_the_pipeline_once(model, tmp_path, monkeypatch):
    # Dynamo's "eager" backend stands in for inductor (minutes of C++ compilation on this CPU).
    compiled = []
    compile_with_inductor = LDRPSPipeline.enable_torch_compile

    def compile_with_eager(pipe, **options):
        compiled.append(options)
        compile_with_inductor(pipe, backend="eager")

    monkeypatch.setattr(LDRPSPipeline, "enable_torch_compile", compile_with_eager)
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png", seed=1)
    torch._dynamo.reset()
    try:
        assert restore(model, a, b, "-o", tmp_path / "out", "--compile") == 0
    finally:
        torch._dynamo.reset()
    assert compiled == [{}]
    assert PIL.Image.open(tmp_path / "out" / "b.png").size == (14, 10)


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32", "cuda") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float16", "cpu")
